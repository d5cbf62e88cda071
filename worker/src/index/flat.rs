//! Exact (flat) index of one collection: vectors in `tch` tensors, everything else on the
//! host. Search is a matrix product plus top-k; deletes are tombstones (masked out of
//! every search) until compaction drops them. Vectors are stored in fp32 on the CPU and in
//! fp16 on CUDA (half the memory and bandwidth; scores stay within ~1e-3 of fp32).
//!
//! With several devices ([`Placement`]) the rows are sharded round-robin: row `i` lives
//! on shard `i % n` at position `i / n`. A search runs the product and a top-k on every
//! shard (launched on all devices before any result is read back) and merges the
//! candidates on the host, so it returns exactly what one device would.

use super::filter::Filter;
use super::{IndexError, Placement};
use crate::log::{ChunkRecord, Metadata, Metric};
use std::collections::HashMap;
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
}

/// The flat index of one collection.
pub struct FlatIndex {
    dim: usize,
    metric: Metric,
    /// Storage precision of the vectors (`Float` or `Half`).
    kind: Kind,
    shards: Vec<Shard>,
    rows: Vec<Option<Arc<Row>>>,
    docs: HashMap<String, Vec<usize>>,
    dead: usize,
}

impl FlatIndex {
    /// An empty index of `dim`-dimensional vectors on `placement`, in the precision of
    /// its first device ([`storage_kind`]).
    pub fn new(dim: usize, metric: Metric, placement: impl Into<Placement>) -> Self {
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
    ) -> Self {
        let shards = placement
            .into()
            .devices()
            .iter()
            .map(|&device| Shard {
                device,
                vectors: SharedTensor(Tensor::zeros([MIN_CAPACITY, dim as i64], (kind, device))),
            })
            .collect();
        Self {
            dim,
            metric,
            kind,
            shards,
            rows: Vec::new(),
            docs: HashMap::new(),
            dead: 0,
        }
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
        let mut index = Self::with_kind(dim, metric, placement, kind);
        let n = rows.len();
        if n > 0 {
            let data = Tensor::from_slice(vectors).view([n as i64, dim as i64]);
            index.store_rows(0, &data)?;
        }
        for (i, row) in rows.iter().enumerate() {
            index.docs.entry(row.doc_id.clone()).or_default().push(i);
        }
        index.rows = rows.into_iter().map(|r| Some(Arc::new(r))).collect();
        Ok(index)
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn metric(&self) -> Metric {
        self.metric
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
        let count = data.size()[0] as usize;
        let end = start + count;
        let n = self.shards.len();
        for s in 0..n {
            let (first, last) = (self.shard_len(s, start), self.shard_len(s, end));
            if last == first {
                continue;
            }
            self.reserve(s, last as i64)?;
            // Rows first*n + s, (first+1)*n + s, ... of the batch, as offsets into `data`.
            let picks: Vec<i64> = (first..last).map(|j| (j * n + s - start) as i64).collect();
            let part = data.index_select(0, &Tensor::from_slice(&picks));
            let shard = &self.shards[s];
            shard
                .vectors
                .0
                .narrow(0, first as i64, (last - first) as i64)
                .copy_(&part.to_device(shard.device));
        }
        Ok(())
    }

    /// Replaces every chunk of `doc_id` with `chunks` (which may be empty).
    pub fn upsert(&mut self, doc_id: &str, chunks: &[ChunkRecord]) -> Result<(), IndexError> {
        if let Some(bad) = chunks.iter().find(|c| c.vector.len() != self.dim) {
            return Err(IndexError::Dimension {
                expected: self.dim,
                got: bad.vector.len(),
            });
        }
        self.delete(doc_id);
        if chunks.is_empty() {
            return Ok(());
        }
        let mut flat: Vec<f32> = Vec::with_capacity(chunks.len() * self.dim);
        for c in chunks {
            flat.extend_from_slice(&c.vector);
        }
        let mut new = Tensor::from_slice(&flat).view([chunks.len() as i64, self.dim as i64]);
        if self.metric == Metric::Cosine {
            new = normalize(&new);
        }
        let start = self.rows.len();
        self.store_rows(start, &new)?;
        let ids = self.docs.entry(doc_id.to_string()).or_default();
        for (i, c) in chunks.iter().enumerate() {
            ids.push(start + i);
            self.rows.push(Some(Arc::new(Row {
                doc_id: doc_id.to_string(),
                chunk_id: c.chunk_id.clone(),
                text: c.text.clone(),
                metadata: c.metadata.clone(),
            })));
        }
        Ok(())
    }

    /// Tombstones every chunk of `doc_id`; returns whether the document existed.
    pub fn delete(&mut self, doc_id: &str) -> bool {
        let Some(rows) = self.docs.remove(doc_id) else {
            return false;
        };
        for r in rows {
            self.rows[r] = None;
            self.dead += 1;
        }
        if self.dead as f64 > COMPACT_RATIO * self.rows.len() as f64 && self.dead > 64 {
            self.compact();
        }
        true
    }

    /// Grows shard `s` to hold `rows`; on a GPU, first checks that the new tensor fits in
    /// its free memory, so a too-large collection is a clear error, not an OOM.
    fn reserve(&mut self, s: usize, rows: i64) -> Result<(), IndexError> {
        let used = self.shard_len(s, self.rows.len()) as i64;
        let (dim, kind) = (self.dim as i64, self.kind);
        let shard = &mut self.shards[s];
        let cap = shard.vectors.0.size()[0];
        if rows <= cap {
            return Ok(());
        }
        let new_cap = (cap * 2).max(rows);
        if let Device::Cuda(ordinal) = shard.device {
            let bytes = new_cap as u64 * dim as u64 * kind.elt_size_in_bytes() as u64;
            crate::gpu::check_capacity(ordinal, bytes, &format!("a shard of {rows} rows"))
                .map_err(IndexError::Capacity)?;
        }
        let grown = Tensor::f_zeros([new_cap, dim], (kind, shard.device))?;
        grown
            .narrow(0, 0, used)
            .copy_(&shard.vectors.0.narrow(0, 0, used));
        shard.vectors = SharedTensor(grown);
        Ok(())
    }

    /// Drops tombstoned rows from the tensors and the host tables (live rows keep their
    /// order, so results do not change).
    pub fn compact(&mut self) {
        let live = self.export();
        let (rows, vectors): (Vec<Row>, Vec<Vec<f32>>) = live.into_iter().unzip();
        let flat: Vec<f32> = vectors.into_iter().flatten().collect();
        let placement = Placement::from(self.devices());
        match Self::from_rows_as(self.dim, self.metric, placement, self.kind, rows, &flat) {
            Ok(fresh) => *self = fresh,
            Err(e) => tracing::warn!(error = %e, "compaction skipped; tombstones stay masked"),
        }
    }

    /// The `k` best live rows for each query that pass `filter`, best first.
    pub fn search(
        &self,
        queries: &[Vec<f32>],
        k: usize,
        filter: &Filter,
    ) -> Result<Vec<Vec<Hit>>, IndexError> {
        if let Some(bad) = queries.iter().find(|q| q.len() != self.dim) {
            return Err(IndexError::Dimension {
                expected: self.dim,
                got: bad.len(),
            });
        }
        let total = self.rows.len();
        let allowed: Option<Vec<bool>> = (self.dead > 0 || !filter.is_empty()).then(|| {
            self.rows
                .iter()
                .map(|r| r.as_ref().is_some_and(|r| filter.matches(&r.metadata)))
                .collect()
        });
        let candidates = allowed
            .as_ref()
            .map_or(total, |a| a.iter().filter(|x| **x).count());
        let k = k.min(candidates);
        if k == 0 || queries.is_empty() {
            return Ok(vec![Vec::new(); queries.len()]);
        }
        let flat: Vec<f32> = queries.iter().flatten().copied().collect();
        let mut q = Tensor::from_slice(&flat).view([queries.len() as i64, self.dim as i64]);
        if self.metric == Metric::Cosine {
            q = normalize(&q);
        }
        let n = self.shards.len();
        // Launch every shard's product and top-k before reading any back, so that the
        // devices work at the same time.
        let mut launched = Vec::with_capacity(n);
        for (s, shard) in self.shards.iter().enumerate() {
            let len = self.shard_len(s, total);
            let mask: Option<Vec<u8>> = allowed
                .as_ref()
                .map(|a| a.iter().skip(s).step_by(n).map(|&b| u8::from(b)).collect());
            let k_s = mask
                .as_ref()
                .map_or(len, |m| m.iter().filter(|&&b| b == 1).count())
                .min(k);
            if k_s == 0 {
                continue;
            }
            let db = shard.vectors.0.narrow(0, 0, len as i64);
            let mut scores = q
                .to_device(shard.device)
                .to_kind(self.kind)
                .f_matmul(&db.tr())?;
            if let Some(mask) = mask {
                let ok = Tensor::from_slice(&mask)
                    .to_device(shard.device)
                    .to_kind(Kind::Bool);
                scores = scores.f_masked_fill(&ok.logical_not(), f64::NEG_INFINITY)?;
            }
            let (values, indices) = scores.f_topk(k_s as i64, 1, true, true)?;
            launched.push((s, k_s, values, indices));
        }
        let mut merged: Vec<Vec<(f32, usize)>> = vec![Vec::new(); queries.len()];
        for (s, k_s, values, indices) in launched {
            let values: Vec<f32> = Vec::<f32>::try_from(
                values
                    .to_kind(Kind::Float)
                    .to_device(Device::Cpu)
                    .flatten(0, -1),
            )?;
            let indices: Vec<i64> =
                Vec::<i64>::try_from(indices.to_device(Device::Cpu).flatten(0, -1))?;
            for (qi, (vals, idxs)) in values.chunks(k_s).zip(indices.chunks(k_s)).enumerate() {
                merged[qi].extend(
                    vals.iter()
                        .zip(idxs)
                        .map(|(&v, &local)| (v, local as usize * n + s)),
                );
            }
        }
        Ok(merged
            .into_iter()
            .map(|mut cands| {
                // Best first; equal scores in row order, as a single device returns them.
                cands.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                cands
                    .into_iter()
                    .filter(|(score, _)| score.is_finite())
                    .take(k)
                    .filter_map(|(score, i)| {
                        let row = self.rows[i].as_ref()?;
                        Some(Hit {
                            row: Arc::clone(row),
                            score,
                        })
                    })
                    .collect()
            })
            .collect())
    }

    /// Live rows with their vectors, in row order (for snapshots).
    pub fn export(&self) -> Vec<(Row, Vec<f32>)> {
        self.freeze().export()
    }

    /// A consistent, cheap copy of the collection (tensor views and shared rows, nothing
    /// copied) whose export can run later on another thread: rows are only ever appended
    /// past the frozen length, and growth or compaction replaces tensors instead of
    /// writing into them.
    pub fn freeze(&self) -> Frozen {
        let total = self.rows.len();
        Frozen {
            dim: self.dim,
            metric: self.metric,
            shards: self
                .shards
                .iter()
                .enumerate()
                .map(|(s, shard)| {
                    let len = self.shard_len(s, total) as i64;
                    shard.vectors.0.narrow(0, 0, len)
                })
                .collect(),
            rows: self.rows.clone(),
        }
    }
}

/// A frozen view of one collection (see [`FlatIndex::freeze`]).
pub struct Frozen {
    pub dim: usize,
    pub metric: Metric,
    shards: Vec<Tensor>,
    rows: Vec<Option<Arc<Row>>>,
}

impl Frozen {
    /// Live rows with their vectors (fp32), in row order.
    pub fn export(&self) -> Vec<(Row, Vec<f32>)> {
        let n = self.shards.len();
        let per_shard: Vec<Vec<f32>> = self
            .shards
            .iter()
            .map(|t| {
                Vec::<f32>::try_from(t.to_kind(Kind::Float).to_device(Device::Cpu).flatten(0, -1))
                    .unwrap_or_default()
            })
            .collect();
        let dim = self.dim;
        self.rows
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let r = r.as_ref()?;
                let (s, j) = (i % n, i / n);
                let v = per_shard[s].get(j * dim..(j + 1) * dim)?.to_vec();
                Some((Row::clone(r), v))
            })
            .collect()
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

fn normalize(t: &Tensor) -> Tensor {
    let norm = t
        .norm_scalaropt_dim(2.0, [1i64].as_slice(), true)
        .clamp_min(1e-12);
    t / norm
}
