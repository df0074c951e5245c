//! Plan → effects. The only module that talks to the targets of invalidation: Redis
//! ([`redis`]), CDNs ([`cdn`]), the dead-letter file ([`dlq`]), and the completion notices
//! ([`notify`]).

pub mod aws;
pub mod cdn;
pub mod dlq;
pub mod notify;
pub mod redis;
