//! Plan → effects. The only module that talks to the targets of invalidation: Redis
//! ([`redis`]), CDNs ([`cdn`]), and the dead-letter file ([`dlq`]).

pub mod cdn;
pub mod dlq;
pub mod redis;
