//! Plan → effects. The only module that talks to the targets of invalidation: Redis
//! ([`redis`]), CDNs ([`cdn`]) and the completion notices ([`notify`]). Dead letters
//! are in [`crate::dead_letter`].

pub mod aws;
pub mod cdn;
pub mod notify;
pub mod redis;
