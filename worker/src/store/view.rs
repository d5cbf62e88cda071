//! A copy of what request handlers need to know about the index (applied sequence,
//! collections and their sizes), republished after every write so that async handlers
//! (`/readyz`, `/metrics`, collection listings, query cache hits) never wait for the index
//! lock while a long search or a large apply holds it.

use crate::index::Index;
use crate::log::{Binding, Metric, Seq};
use std::collections::BTreeMap;

/// The index as of its last write.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IndexView {
    /// Last sequence applied to the index.
    pub applied: Seq,
    /// Every collection, by name.
    pub collections: BTreeMap<String, CollectionView>,
    /// Alias → collection.
    pub aliases: BTreeMap<String, String>,
    /// Re-index jobs under way, by target collection.
    pub jobs: BTreeMap<String, crate::log::ReindexJob>,
}

/// One collection as of the last write.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectionView {
    pub dim: usize,
    pub metric: Metric,
    pub documents: usize,
    pub chunks: usize,
    pub tombstones: usize,
    /// Sequence of the last write that changed the collection (the query cache's key).
    pub version: Seq,
    /// Whether the collection keeps a lexical index (`index.lexical` is not `off`).
    pub lexical: bool,
    /// Where its vectors come from (`None`: not recorded yet, data of an older version).
    pub binding: Option<Binding>,
}

impl IndexView {
    /// Copies the summary out of `index` (O(collections)).
    pub fn of(index: &Index) -> IndexView {
        let collections = index
            .collections()
            .map(|(name, c)| {
                let stats = c.stats();
                let view = CollectionView {
                    dim: c.dim(),
                    metric: c.metric(),
                    documents: stats.documents,
                    chunks: stats.chunks,
                    tombstones: stats.tombstones,
                    version: index.version(name),
                    lexical: c.lexical_analyzer().is_some(),
                    binding: index.binding(name).cloned(),
                };
                (name.clone(), view)
            })
            .collect();
        IndexView {
            applied: index.applied(),
            collections,
            aliases: index.catalog().aliases.clone(),
            jobs: index.catalog().jobs.clone(),
        }
    }

    /// The aliases that point at `collection`.
    pub fn aliases_of(&self, collection: &str) -> Vec<String> {
        crate::index::catalog::aliases_of(&self.aliases, collection)
    }

    /// The collection `name` designates: an alias's target, or `name` itself.
    pub fn resolve<'a>(&'a self, name: &'a str) -> &'a str {
        self.aliases.get(name).map_or(name, String::as_str)
    }

    /// One collection, if it exists.
    pub fn get(&self, name: &str) -> Option<&CollectionView> {
        self.collections.get(name)
    }
}
