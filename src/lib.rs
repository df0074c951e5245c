pub mod config;
pub mod event;
pub mod plan;
pub mod rules;
