//! The `kb-worker` command line.

pub mod client;
pub mod ingest;
pub mod query;
pub mod serve;
