//! Exact (flat) index of one collection: vectors in `tch` tensors, everything else on the
//! host. Search is a matrix product plus top-k; deletes are tombstones (masked out of
//! every search) until compaction drops them. Vectors are stored in fp32 on the CPU and in
//! fp16 on CUDA (half the memory and bandwidth; scores stay within ~1e-3 of fp32).
//!
//! With several devices ([`Placement`]) the rows are sharded round-robin: row `i` lives
//! on shard `i % n` at position `i / n`. A search runs the product and a top-k on every
//! shard (launched on all devices before any result is read back) and merges the
//! candidates on the host, so it returns exactly what one device would.

use super::lexical::{Analyzer, LexicalIndex};
use super::{IndexError, Placement};
use crate::log::{ChunkRecord, Metadata, Metric};
use std::collections::BTreeMap;
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// Compaction runs once this fraction of rows are tombstones.
const COMPACT_RATIO: f64 = 0.25;
const MIN_CAPACITY: i64 = 1024;

/// A tensor that many threads may read at once. libtorch kernels do not mutate their
/// inputs, and every mutation of the index happens under the caller's write lock.
struct SharedTensor(Tensor);
// SAFETY: only read through `&self` (matmul/narrow create new tensors); writes need `&mut`.
unsafe impl Sync for SharedTensor {}

/// Host-side data of one row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub doc_id: String,
    pub chunk_id: String,
    pub text: String,
    pub metadata: Metadata,
}

/// One search result (the row is shared with the index, not copied).
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub row: Arc<Row>,
    pub score: f32,
}

/// Size figures of a collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CollectionStats {
    pub documents: usize,
    pub chunks: usize,
    pub tombstones: usize,
}

/// The vectors that live on one device.
struct Shard {
    device: Device,
    vectors: SharedTensor,
    /// Tombstones of this shard as a device-resident bool per row (true: dead), created
    /// at the first tombstone and updated incrementally, so searches mask them without
    /// host work.
    dead: Option<SharedTensor>,
    /// Tombstoned rows of this shard.
    dead_count: usize,
    /// A bf16 copy of `vectors` (same capacity) that screens batched searches on a CPU
    /// ([`screen`]); `None` unless the placement asks for it and the shard is an fp32 CPU
    /// shard.
    screen: Option<SharedTensor>,
    /// An upper bound of the rows' Euclidean norms (kept with the screen: it sizes the
    /// screen's error margin).
    max_norm: f64,
}

/// The flat index of one collection.
pub struct FlatIndex {
    dim: usize,
    metric: Metric,
    /// Storage precision of the vectors (`Float` or `Half`).
    kind: Kind,
    /// Whether the placement asked CPU shards to keep a bf16 screening copy.
    cpu_screen: bool,
    shards: Vec<Shard>,
    rows: Vec<Option<Arc<Row>>>,
    docs: BTreeMap<String, Vec<usize>>,
    dead: usize,
    /// Whether every shard's `dead` mask holds its tombstones (false after a failed mask
    /// update: searches then build the mask on the host until the next compaction).
    masks_ok: bool,
    /// The BM25 index of the rows' texts, when the placement asks for one.
    lexical: Option<LexicalIndex>,
}

impl FlatIndex {
    /// An empty index of `dim`-dimensional vectors on `placement`, in the precision of
    /// its first device ([`storage_kind`]).
    pub fn new(
        dim: usize,
        metric: Metric,
        placement: impl Into<Placement>,
    ) -> Result<Self, IndexError> {
        let placement = placement.into();
        let kind = storage_kind(placement.primary());
        Self::with_kind(dim, metric, placement, kind)
    }

    /// An empty index storing its vectors as `kind` (`Kind::Float` or `Kind::Half`).
    pub fn with_kind(
        dim: usize,
        metric: Metric,
        placement: impl Into<Placement>,
        kind: Kind,
    ) -> Result<Self, IndexError> {
        let placement = placement.into();
        let cpu_screen = placement.cpu_screen();
        let lexical = placement.lexical().map(LexicalIndex::new);
        let shards = placement
            .devices()
            .iter()
            .map(|&device| {
                let zeros = |kind| Tensor::f_zeros([MIN_CAPACITY, dim as i64], (kind, device));
                let screened = cpu_screen && device == Device::Cpu && kind == Kind::Float;
                Ok(Shard {
                    device,
                    vectors: SharedTensor(zeros(kind)?),
                    dead: None,
                    dead_count: 0,
                    screen: match screened {
                        true => Some(SharedTensor(zeros(Kind::BFloat16)?)),
                        false => None,
                    },
                    max_norm: 0.0,
                })
            })
            .collect::<Result<_, IndexError>>()?;
        Ok(Self {
            dim,
            metric,
            kind,
            cpu_screen,
            shards,
            rows: Vec::new(),
            docs: BTreeMap::new(),
            dead: 0,
            masks_ok: true,
            lexical,
        })
    }

    /// An index holding `rows` with their row-major `vectors` (stored as given: snapshot
    /// vectors were normalised when first inserted).
    pub fn from_rows(
        dim: usize,
        metric: Metric,
        placement: impl Into<Placement>,
        rows: Vec<Row>,
        vectors: &[f32],
    ) -> Result<Self, IndexError> {
        let placement = placement.into();
        let kind = storage_kind(placement.primary());
        Self::from_rows_as(dim, metric, placement, kind, rows, vectors)
    }

    /// [`FlatIndex::from_rows`] with an explicit storage precision.
    pub fn from_rows_as(
        dim: usize,
        metric: Metric,
        placement: impl Into<Placement>,
        kind: Kind,
        rows: Vec<Row>,
        vectors: &[f32],
    ) -> Result<Self, IndexError> {
        let mut builder = Self::builder(dim, metric, placement, kind, rows.len())?;
        builder.push(rows.into_iter().map(Arc::new).collect(), vectors)?;
        builder.finish()
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn metric(&self) -> Metric {
        self.metric
    }

    /// The analyzer of the collection's lexical index, if it keeps one.
    pub fn lexical_analyzer(&self) -> Option<Analyzer> {
        self.lexical.as_ref().map(LexicalIndex::analyzer)
    }

    /// Appends `row` as row number `self.rows.len()` (its vector is stored already).
    fn push_row(&mut self, row: Arc<Row>) {
        let at = self.rows.len();
        if let Some(lexical) = &mut self.lexical {
            lexical.add(at, &row.text);
        }
        self.docs.entry(row.doc_id.clone()).or_default().push(at);
        self.rows.push(Some(row));
    }

    /// Whether some shard screens batched searches through a bf16 copy ([`screen`]).
    pub fn is_screened(&self) -> bool {
        self.shards.iter().any(|s| s.screen.is_some())
    }

    /// Devices holding the shards, in shard order.
    pub fn devices(&self) -> Vec<Device> {
        self.shards.iter().map(|s| s.device).collect()
    }

    pub fn stats(&self) -> CollectionStats {
        CollectionStats {
            documents: self.docs.len(),
            chunks: self.rows.len() - self.dead,
            tombstones: self.dead,
        }
    }

    /// Whether `doc_id` has chunks here.
    pub fn contains(&self, doc_id: &str) -> bool {
        self.docs.contains_key(doc_id)
    }

    /// Rows of `total` that shard `s` holds (row `i` is on shard `i % n`).
    fn shard_len(&self, s: usize, total: usize) -> usize {
        let n = self.shards.len();
        (total + n - 1 - s) / n
    }

    /// Writes `data` (host, fp32) as rows `start..start + len` into their shards, growing
    /// them first.
    fn store_rows(&mut self, start: usize, data: &Tensor) -> Result<(), IndexError> {
        #[cfg(test)]
        faults::fire()?;
        let count = data.size()[0] as usize;
        let end = start + count;
        let n = self.shards.len();
        for s in 0..n {
            let (first, last) = (self.shard_len(s, start), self.shard_len(s, end));
            if last == first {
                continue;
            }
            self.reserve(s, last as i64)?;
            let part = if n == 1 {
                // One shard holds every row: no gathered copy of the batch.
                data.shallow_clone()
            } else {
                // Rows first*n + s, (first+1)*n + s, ... of the batch, as offsets into
                // `data`.
                let picks: Vec<i64> = (first..last).map(|j| (j * n + s - start) as i64).collect();
                data.f_index_select(0, &Tensor::f_from_slice(&picks)?)?
            };
            let shard = &mut self.shards[s];
            let (at, len) = (first as i64, (last - first) as i64);
            let part = part.f_to_device(shard.device)?;
            shard.vectors.0.f_narrow(0, at, len)?.f_copy_(&part)?;
            if let Some(screen) = &shard.screen {
                screen.0.f_narrow(0, at, len)?.f_copy_(&part)?;
                let norm = part.f_norm_scalaropt_dim(2.0, [1i64].as_slice(), false)?;
                shard.max_norm = shard.max_norm.max(norm.f_max()?.f_double_value(&[])?);
            }
        }
        Ok(())
    }

    /// Replaces every chunk of `doc_id` with `chunks` (which may be empty). The new rows
    /// are stored before the old ones are tombstoned, so a failure (no memory for the
    /// grown tensor, a device error) leaves the collection exactly as it was.
    pub fn upsert(&mut self, doc_id: &str, chunks: &[ChunkRecord]) -> Result<(), IndexError> {
        if let Some(bad) = chunks.iter().find(|c| c.vector.len() != self.dim) {
            return Err(IndexError::Dimension {
                expected: self.dim,
                got: bad.vector.len(),
            });
        }
        let start = self.rows.len();
        if !chunks.is_empty() {
            let mut flat: Vec<f32> = Vec::with_capacity(chunks.len() * self.dim);
            for c in chunks {
                flat.extend_from_slice(&c.vector);
            }
            let mut new =
                Tensor::f_from_slice(&flat)?.f_view([chunks.len() as i64, self.dim as i64])?;
            if self.metric == Metric::Cosine {
                new = normalize(&new)?;
            }
            // Rows past `self.rows.len()` are invisible until pushed below.
            self.store_rows(start, &new)?;
        }
        let old = self.docs.remove(doc_id);
        for c in chunks {
            self.push_row(Arc::new(Row {
                doc_id: doc_id.to_string(),
                chunk_id: c.chunk_id.clone(),
                text: c.text.clone(),
                metadata: c.metadata.clone(),
            }));
        }
        if let Some(old) = old {
            self.tombstone(old);
        }
        Ok(())
    }

    /// Tombstones rows (host tables and device masks), then compacts when enough are
    /// dead.
    fn tombstone(&mut self, rows: Vec<usize>) {
        let n = self.shards.len();
        let mut per_shard: Vec<Vec<i64>> = vec![Vec::new(); n];
        for r in rows {
            if let (Some(lexical), Some(row)) = (&mut self.lexical, &self.rows[r]) {
                lexical.remove(r, &row.text);
            }
            self.rows[r] = None;
            self.dead += 1;
            self.shards[r % n].dead_count += 1;
            per_shard[r % n].push((r / n) as i64);
        }
        for (s, positions) in per_shard.into_iter().enumerate() {
            if positions.is_empty() || !self.masks_ok {
                continue;
            }
            if let Err(e) = self.mark_dead(s, &positions) {
                tracing::warn!(error = %e, "tombstone mask update failed; searches mask on the host until compaction");
                self.masks_ok = false;
            }
        }
        if self.dead as f64 > COMPACT_RATIO * self.rows.len() as f64 && self.dead > 64 {
            self.compact();
        }
    }

    /// Sets `positions` of shard `s` dead in its device mask (creating the mask).
    fn mark_dead(&mut self, s: usize, positions: &[i64]) -> Result<(), IndexError> {
        let shard = &mut self.shards[s];
        if shard.dead.is_none() {
            let cap = shard.vectors.0.size()[0];
            shard.dead = Some(SharedTensor(Tensor::f_zeros(
                [cap],
                (Kind::Bool, shard.device),
            )?));
        }
        let index = Tensor::f_from_slice(positions)?.f_to_device(shard.device)?;
        if let Some(mask) = shard.dead.as_mut() {
            let _ = mask.0.f_index_fill_(0, &index, 1)?;
        }
        Ok(())
    }

    /// Tombstones every chunk of `doc_id`; returns whether the document existed.
    pub fn delete(&mut self, doc_id: &str) -> bool {
        let Some(rows) = self.docs.remove(doc_id) else {
            return false;
        };
        self.tombstone(rows);
        true
    }

    /// Drops tombstoned rows from the tensors and the host tables (live rows keep their
    /// order, so results do not change). The live rows are copied a chunk at a time into
    /// tensors sized for them, after checking that those fit next to the current ones; a
    /// failure (memory, device) keeps the current tensors: tombstones stay masked.
    pub fn compact(&mut self) {
        let fresh = self.freeze().and_then(|frozen| {
            let placement = Placement::from(self.devices())
                .with_cpu_screen(self.cpu_screen)
                .with_lexical(self.lexical_analyzer());
            let live = frozen.live();
            let mut builder = Self::builder(self.dim, self.metric, placement, self.kind, live)?;
            for chunk in frozen.chunks() {
                let chunk = chunk?;
                builder.push(chunk.rows, &chunk.vectors)?;
            }
            builder.finish()
        });
        match fresh {
            Ok(fresh) => *self = fresh,
            Err(e) => tracing::warn!(error = %e, "compaction skipped; tombstones stay masked"),
        }
    }

    /// Live rows with their vectors, in row order (for snapshots).
    pub fn export(&self) -> Result<Vec<(Row, Vec<f32>)>, IndexError> {
        self.freeze()?.export()
    }

    /// A consistent, cheap copy of the collection (tensor views and shared rows, nothing
    /// copied) whose export can run later on another thread: rows are only ever appended
    /// past the frozen length, and growth or compaction replaces tensors instead of
    /// writing into them.
    pub fn freeze(&self) -> Result<Frozen, IndexError> {
        let total = self.rows.len();
        let shards = self
            .shards
            .iter()
            .enumerate()
            .map(|(s, shard)| {
                let len = self.shard_len(s, total) as i64;
                shard.vectors.0.f_narrow(0, 0, len)
            })
            .collect::<Result<_, _>>()?;
        Ok(Frozen {
            dim: self.dim,
            metric: self.metric,
            shards,
            rows: self.rows.clone(),
        })
    }
}

/// Storage precision of index vectors on `device`: fp16 on CUDA, fp32 elsewhere.
pub fn storage_kind(device: Device) -> Kind {
    if device.is_cuda() {
        Kind::Half
    } else {
        Kind::Float
    }
}

fn normalize(t: &Tensor) -> Result<Tensor, tch::TchError> {
    let norm = t
        .f_norm_scalaropt_dim(2.0, [1i64].as_slice(), true)?
        .f_clamp_min(1e-12)?;
    t.f_div(&norm)
}

/// Failures injected into the next row store of this thread (tests only).
#[cfg(test)]
pub(crate) mod faults;

mod build;
mod documents;
mod growth;
pub use build::Builder;
pub use documents::{Differences, StoredDocument};
#[cfg(test)]
pub(super) use growth::growth_bytes;
mod frozen;
mod hybrid;
pub use hybrid::LexicalHit;
pub mod screen;
mod search;
pub mod select;
pub use frozen::{Chunk, Frozen, CHUNK_ROWS};
