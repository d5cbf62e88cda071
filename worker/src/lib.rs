//! kb-worker: the data plane of knowledgebase-operator.
pub mod index;
pub mod log;
pub mod snapshot;
