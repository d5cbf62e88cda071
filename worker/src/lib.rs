//! kb-worker: the data plane of knowledgebase-operator. Chunk, embed, index, search and
//! serve over HTTP; durable through a write-ahead log and snapshots.
#![forbid(unsafe_op_in_unsafe_fn)]

pub mod api;
pub mod auth;
pub mod cache;
pub mod chunk;
pub mod cli;
pub mod durable;
pub mod format;
pub mod gpu;
pub mod host;
pub mod index;
pub mod log;
pub mod metrics;
pub mod reindex;
pub mod replica;
pub mod search;
pub mod snapshot;
pub mod stages;
pub mod store;
#[cfg(test)]
pub(crate) mod test_support;
