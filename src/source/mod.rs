//! Sources: where records come from. Each yields records in order with their position; the caller
//! acknowledges them only after the engine applied or dead-lettered them.

pub mod files;
#[cfg(feature = "kafka")]
pub mod kafka;
mod lines;
