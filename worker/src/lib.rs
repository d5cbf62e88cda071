//! kb-worker: the data plane of knowledgebase-operator.
pub mod chunk;
pub mod index;
pub mod log;
pub mod snapshot;
pub mod store;
#[cfg(test)]
pub(crate) mod test_support;
