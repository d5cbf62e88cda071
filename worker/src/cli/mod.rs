//! The `kb-worker` command line.

pub mod backup;
pub mod bench;
pub mod client;
pub mod ingest;
pub mod objects;
pub mod query;
pub mod serve;
