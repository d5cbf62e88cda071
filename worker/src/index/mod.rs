//! The in-memory index of every collection, rebuilt deterministically from the log.

pub mod catalog;
pub mod filter;
pub mod flat;
pub mod fusion;
pub mod lexical;

use crate::log::{Binding, Metric, Op, Record, Seq};
use catalog::Catalog;
use flat::FlatIndex;
use std::collections::BTreeMap;
use tch::Device;

/// The largest vector dimension a collection may have (embedding models stay far below):
/// a snapshot announcing more is corrupt or crafted, refused before anything is sized by it.
pub const MAX_DIM: usize = 65_536;

/// Errors applying a record or searching.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("vector has {got} dimensions, the collection has {expected}")]
    Dimension { expected: usize, got: usize },
    #[error("collection {0:?} does not exist")]
    NoSuchCollection(String),
    #[error("collection {name:?} exists with dimension {dim} and metric {metric:?}")]
    Conflict {
        name: String,
        dim: usize,
        metric: Metric,
    },
    #[error("tensor operation failed: {0}")]
    Torch(#[from] tch::TchError),
    #[error("search failed: {0}")]
    Aborted(String),
    #[error("not enough memory: {0}")]
    Capacity(String),
    #[error("invalid filter: {0}")]
    Filter(String),
    #[error("collection {collection:?} holds vectors of {stored}; this worker embeds with {given}. Run the model the collection was made with, or re-index it into a new collection for this model and point an alias at it")]
    ModelMismatch {
        collection: String,
        stored: String,
        given: String,
    },
    #[error("{0}")]
    NameTaken(String),
    #[error("lexical and hybrid search need a lexical index, which this worker does not keep: set index.lexical to standard or english in the worker config (spec.index.lexical of the KnowledgeBase)")]
    LexicalOff,
}

impl IndexError {
    /// Whether the failure comes from this worker's resources (memory, devices) rather
    /// than from the log's contents. Such a record is not applied (the applied sequence
    /// stays put) so that it can be retried; every other failure is deterministic, the
    /// same on every replica, and the record applies as a no-op.
    pub fn is_resource(&self) -> bool {
        matches!(
            self,
            IndexError::Torch(_) | IndexError::Aborted(_) | IndexError::Capacity(_)
        )
    }
}

/// Where index vectors live: one device, or shards over several (a GPU may be listed
/// twice, and so may the CPU, which is how the sharded path is tested without GPUs),
/// whether CPU shards keep a bf16 screening copy ([`flat::screen`]), and whether
/// collections keep a lexical index ([`lexical`]) next to their vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    devices: Vec<Device>,
    cpu_screen: bool,
    lexical: Option<lexical::Analyzer>,
}

impl Placement {
    /// The devices, in shard order (never empty).
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// The first device: it sets the storage precision.
    pub fn primary(&self) -> Device {
        self.devices[0]
    }

    /// This placement with CPU shards screening batched searches through a bf16 copy of
    /// their vectors (`index.cpu_screen: bf16`) or not.
    pub fn with_cpu_screen(mut self, on: bool) -> Self {
        self.cpu_screen = on;
        self
    }

    /// Whether CPU shards keep a bf16 screening copy.
    pub fn cpu_screen(&self) -> bool {
        self.cpu_screen
    }

    /// This placement with collections keeping a lexical index analysed by `analyzer`
    /// (`index.lexical`), or none.
    pub fn with_lexical(mut self, analyzer: Option<lexical::Analyzer>) -> Self {
        self.lexical = analyzer;
        self
    }

    /// The analyzer of the collections' lexical indexes, if they keep one.
    pub fn lexical(&self) -> Option<lexical::Analyzer> {
        self.lexical
    }
}

impl From<Device> for Placement {
    fn from(device: Device) -> Self {
        Placement::from(vec![device])
    }
}

impl From<Vec<Device>> for Placement {
    /// An empty list means the CPU.
    fn from(devices: Vec<Device>) -> Self {
        Placement {
            devices: if devices.is_empty() {
                vec![Device::Cpu]
            } else {
                devices
            },
            cpu_screen: false,
            lexical: None,
        }
    }
}

/// Every collection plus the sequence of the last record applied.
pub struct Index {
    placement: Placement,
    collections: BTreeMap<String, FlatIndex>,
    applied: Seq,
    /// Sequence of the last applied record that changed each collection.
    changed: BTreeMap<String, Seq>,
    /// Sequence of the snapshot this index was loaded from (0: built from the log).
    loaded_at: Seq,
    /// Documents removed by the latest [`Op::DeleteMatching`] records, by sequence
    /// (the newest [`MATCHED_KEPT`]), for the answer of the request that logged them.
    matched: std::collections::VecDeque<(Seq, usize)>,
    /// Bindings and aliases.
    catalog: Catalog,
}

/// How many [`Op::DeleteMatching`] outcomes an index remembers.
const MATCHED_KEPT: usize = 256;

impl Index {
    /// An empty index whose vectors live on `placement` (a device or a list of them).
    pub fn new(placement: impl Into<Placement>) -> Self {
        Self {
            placement: placement.into(),
            collections: BTreeMap::new(),
            applied: 0,
            changed: BTreeMap::new(),
            loaded_at: 0,
            matched: std::collections::VecDeque::new(),
            catalog: Catalog::default(),
        }
    }

    /// Bindings and aliases.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Replaces the catalog (snapshot restore).
    pub fn set_catalog(&mut self, catalog: Catalog) {
        self.catalog = catalog;
    }

    /// Where `collection`'s vectors come from, if recorded.
    pub fn binding(&self, collection: &str) -> Option<&Binding> {
        self.catalog.bindings.get(collection)
    }

    /// How many documents the [`Op::DeleteMatching`] record at `seq` removed (`None`
    /// when `seq` is no such record, or too old).
    pub fn deleted_by(&self, seq: Seq) -> Option<usize> {
        self.matched
            .iter()
            .find(|(s, _)| *s == seq)
            .map(|(_, n)| *n)
    }

    /// The sequence of the last applied record.
    pub fn applied(&self) -> Seq {
        self.applied
    }

    /// Sets the applied sequence (after loading a snapshot).
    pub fn set_applied(&mut self, seq: Seq) {
        self.applied = seq;
        self.loaded_at = seq;
    }

    /// The version of a collection's contents: the sequence of the last applied record that
    /// changed it, or the snapshot's sequence when none has since it was loaded. Every
    /// replica whose index reports version `v` for `c` holds exactly the writes to `c` up
    /// to `v`, so `(c, v)` can key shared cache entries: any later write changes it.
    pub fn version(&self, collection: &str) -> Seq {
        self.changed
            .get(collection)
            .copied()
            .unwrap_or(self.loaded_at)
    }

    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    pub fn get(&self, name: &str) -> Option<&FlatIndex> {
        self.collections.get(name)
    }

    pub fn collections(&self) -> impl Iterator<Item = (&String, &FlatIndex)> {
        self.collections.iter()
    }

    /// Checks that `op` would apply cleanly, so that a failing write never reaches the log.
    pub fn check(&self, op: &Op) -> Result<(), IndexError> {
        self.catalog
            .check(op, &|c| self.collections.contains_key(c))?;
        match op {
            Op::CreateCollection {
                collection,
                dim,
                metric,
            } => match self.collections.get(collection) {
                Some(c) if c.dim() != *dim || c.metric() != *metric => Err(IndexError::Conflict {
                    name: collection.clone(),
                    dim: c.dim(),
                    metric: c.metric(),
                }),
                _ => Ok(()),
            },
            Op::Upsert {
                collection, chunks, ..
            } => {
                let c = self
                    .collections
                    .get(collection)
                    .ok_or_else(|| IndexError::NoSuchCollection(collection.clone()))?;
                match chunks.iter().find(|ch| ch.vector.len() != c.dim()) {
                    Some(bad) => Err(IndexError::Dimension {
                        expected: c.dim(),
                        got: bad.vector.len(),
                    }),
                    None => Ok(()),
                }
            }
            Op::DeleteMatching { filter, .. } => parse_filter(filter).map(|_| ()),
            Op::StartReindex { job } => match (&job.binding, self.collections.get(&job.source)) {
                (Binding::Model(m), Some(_)) if m.dim == 0 || m.dim > MAX_DIM => {
                    Err(IndexError::Dimension {
                        expected: MAX_DIM,
                        got: m.dim,
                    })
                }
                _ => Ok(()),
            },
            Op::Delete { .. }
            | Op::DropCollection { .. }
            | Op::BindCollection { .. }
            | Op::SetAlias { .. }
            | Op::DeleteAlias { .. }
            | Op::FinishReindex { .. }
            | Op::CancelReindex { .. } => Ok(()),
        }
    }

    /// Checks a batch in order, counting collections that earlier ops of the batch create,
    /// then that the rows it adds fit on every device holding the collections.
    pub fn check_batch(&self, ops: &[Op]) -> Result<(), IndexError> {
        let mut created: BTreeMap<&str, usize> = BTreeMap::new();
        let mut added: BTreeMap<&str, usize> = BTreeMap::new();
        for op in ops {
            match op {
                Op::CreateCollection {
                    collection, dim, ..
                } if !self.collections.contains_key(collection) => {
                    self.catalog.check(op, &|_| false)?;
                    created.insert(collection, *dim);
                }
                Op::Upsert {
                    collection, chunks, ..
                } if created.contains_key(collection.as_str()) => {
                    let dim = created[collection.as_str()];
                    if let Some(bad) = chunks.iter().find(|c| c.vector.len() != dim) {
                        return Err(IndexError::Dimension {
                            expected: dim,
                            got: bad.vector.len(),
                        });
                    }
                }
                Op::DropCollection { collection } => {
                    created.remove(collection.as_str());
                    added.remove(collection.as_str());
                }
                Op::BindCollection {
                    collection,
                    binding,
                } if created.contains_key(collection.as_str()) => {
                    self.catalog.check_binding(collection, binding)?;
                }
                _ => self.check(op)?,
            }
            if let Op::Upsert {
                collection, chunks, ..
            } = op
            {
                *added.entry(collection).or_default() += chunks.len();
            }
        }
        for (name, rows) in added {
            match (self.collections.get(name), created.get(name)) {
                (Some(c), _) => c.check_growth(rows)?,
                (None, Some(&dim)) => FlatIndex::check_new(dim, &self.placement, rows)?,
                (None, None) => {}
            }
        }
        Ok(())
    }

    /// Applies one log record. Records at or below the applied sequence are skipped, so
    /// replaying an overlapping range is harmless.
    pub fn apply(&mut self, record: &Record) -> Result<(), IndexError> {
        if record.seq <= self.applied {
            return Ok(());
        }
        // A deterministic failure (the op does not fit the index, e.g. an upsert into a
        // collection that an earlier record dropped) applies as a no-op on every replica,
        // so the sequence advances; a failure of this worker's resources leaves the index
        // untouched and the sequence where it was, so the caller can stop and retry.
        let result = self.apply_op(&record.op);
        if result.as_ref().is_err_and(IndexError::is_resource) {
            return result.map(|_| ());
        }
        if let (Op::DeleteMatching { .. }, Ok(removed)) = (&record.op, &result) {
            if self.matched.len() == MATCHED_KEPT {
                self.matched.pop_front();
            }
            self.matched.push_back((record.seq, *removed));
        }
        let result = result.map(|_| ());
        self.applied = record.seq;
        self.changed
            .insert(record.op.collection().to_string(), record.seq);
        result
    }

    /// Applies `op`; returns how many documents it removed by filter.
    fn apply_op(&mut self, op: &Op) -> Result<usize, IndexError> {
        match op {
            Op::CreateCollection {
                collection,
                dim,
                metric,
            } => {
                self.check(op)?;
                if !self.collections.contains_key(collection) {
                    let c = FlatIndex::new(*dim, *metric, self.placement.clone())?;
                    self.collections.insert(collection.clone(), c);
                }
            }
            Op::Upsert {
                collection,
                doc_id,
                chunks,
            } => {
                let c = self
                    .collections
                    .get_mut(collection)
                    .ok_or_else(|| IndexError::NoSuchCollection(collection.clone()))?;
                c.upsert(doc_id, chunks)?;
            }
            Op::Delete { collection, doc_id } => {
                if let Some(c) = self.collections.get_mut(collection) {
                    c.delete(doc_id);
                }
            }
            Op::DropCollection { collection } => {
                self.collections.remove(collection);
                let collections = &self.collections;
                self.catalog.apply(op, &|c| collections.contains_key(c))?;
            }
            Op::BindCollection { .. } | Op::SetAlias { .. } | Op::DeleteAlias { .. } => {
                let collections = &self.collections;
                self.catalog.apply(op, &|c| collections.contains_key(c))?;
            }
            Op::StartReindex { job } => {
                self.check(op)?;
                let metric = self.collections[&job.source].metric();
                // Checked: a job binds a model.
                let Binding::Model(model) = &job.binding else {
                    return Ok(0);
                };
                let dim = model.dim;
                let target = FlatIndex::new(dim, metric, self.placement.clone())?;
                let collections = &self.collections;
                self.catalog.apply(op, &|c| collections.contains_key(c))?;
                self.collections.insert(job.target.clone(), target);
            }
            Op::FinishReindex { target } => {
                let Some(job) = self.catalog.jobs.get(target) else {
                    return Ok(0);
                };
                let caught_up = match (
                    self.collections.get(&job.source),
                    self.collections.get(target),
                ) {
                    (Some(source), Some(new)) => source.same_documents(new),
                    _ => false,
                };
                if caught_up {
                    self.collections.remove(&job.source);
                    self.catalog.finish(target);
                }
            }
            Op::CancelReindex { target } => {
                if self.catalog.jobs.contains_key(target) {
                    self.collections.remove(target);
                    self.catalog.apply(op, &|_| true)?;
                }
            }
            Op::DeleteMatching { collection, filter } => {
                let filter = parse_filter(filter)?;
                let Some(c) = self.collections.get_mut(collection) else {
                    return Ok(0);
                };
                let ids = c.matching(&filter);
                for id in &ids {
                    c.delete(id);
                }
                return Ok(ids.len());
            }
        }
        Ok(0)
    }

    /// Inserts a loaded collection (snapshot restore).
    pub fn insert(&mut self, name: String, index: FlatIndex) {
        self.collections.insert(name, index);
    }
}

#[cfg(test)]
mod tests;

/// The filter of an [`Op::DeleteMatching`] record; one that does not parse (never logged
/// by this build) applies as a no-op on every replica alike.
fn parse_filter(text: &str) -> Result<filter::Filter, IndexError> {
    serde_json::from_str(text)
        .map_err(|e| e.to_string())
        .and_then(|value| filter::Filter::parse(&value))
        .map_err(IndexError::Filter)
}
