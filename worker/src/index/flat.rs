//! Exact (flat) index of one collection: vectors in one `tch` tensor, everything else on
//! the host. Search is a matrix product plus top-k; deletes are tombstones (masked out of
//! every search) until compaction drops them. Vectors are stored in fp32 on the CPU and in
//! fp16 on CUDA (half the memory and bandwidth; scores stay within ~1e-3 of fp32).

use super::filter::Filter;
use super::IndexError;
use crate::log::{ChunkRecord, Metadata, Metric};
use std::collections::HashMap;
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

/// One search result.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub row: Row,
    pub score: f32,
}

/// Size figures of a collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CollectionStats {
    pub documents: usize,
    pub chunks: usize,
    pub tombstones: usize,
}

/// The flat index of one collection.
pub struct FlatIndex {
    dim: usize,
    metric: Metric,
    device: Device,
    /// Storage precision of the vectors (`Float` or `Half`).
    kind: Kind,
    vectors: SharedTensor,
    rows: Vec<Option<Row>>,
    docs: HashMap<String, Vec<usize>>,
    dead: usize,
}

impl FlatIndex {
    /// An empty index of `dim`-dimensional vectors on `device`, in the device's default
    /// precision ([`storage_kind`]).
    pub fn new(dim: usize, metric: Metric, device: Device) -> Self {
        Self::with_kind(dim, metric, device, storage_kind(device))
    }

    /// An empty index storing its vectors as `kind` (`Kind::Float` or `Kind::Half`).
    pub fn with_kind(dim: usize, metric: Metric, device: Device, kind: Kind) -> Self {
        Self {
            dim,
            metric,
            device,
            kind,
            vectors: SharedTensor(Tensor::zeros([MIN_CAPACITY, dim as i64], (kind, device))),
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
        device: Device,
        rows: Vec<Row>,
        vectors: &[f32],
    ) -> Result<Self, IndexError> {
        Self::from_rows_as(dim, metric, device, storage_kind(device), rows, vectors)
    }

    /// [`FlatIndex::from_rows`] with an explicit storage precision.
    pub fn from_rows_as(
        dim: usize,
        metric: Metric,
        device: Device,
        kind: Kind,
        rows: Vec<Row>,
        vectors: &[f32],
    ) -> Result<Self, IndexError> {
        let mut index = Self::with_kind(dim, metric, device, kind);
        let n = rows.len() as i64;
        index.reserve(n)?;
        if n > 0 {
            let data = Tensor::from_slice(vectors).view([n, dim as i64]);
            index
                .vectors
                .0
                .narrow(0, 0, n)
                .copy_(&data.to_device(device));
        }
        for (i, row) in rows.iter().enumerate() {
            index.docs.entry(row.doc_id.clone()).or_default().push(i);
        }
        index.rows = rows.into_iter().map(Some).collect();
        Ok(index)
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn metric(&self) -> Metric {
        self.metric
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
        let start = self.rows.len() as i64;
        self.reserve(start + chunks.len() as i64)?;
        self.vectors
            .0
            .narrow(0, start, chunks.len() as i64)
            .copy_(&new.to_device(self.device));
        let ids = self.docs.entry(doc_id.to_string()).or_default();
        for (i, c) in chunks.iter().enumerate() {
            ids.push(start as usize + i);
            self.rows.push(Some(Row {
                doc_id: doc_id.to_string(),
                chunk_id: c.chunk_id.clone(),
                text: c.text.clone(),
                metadata: c.metadata.clone(),
            }));
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

    /// Grows the vector tensor to hold `rows`; on a GPU, first checks that the new tensor
    /// fits in its free memory, so a too-large collection is a clear error, not an OOM.
    fn reserve(&mut self, rows: i64) -> Result<(), IndexError> {
        let cap = self.vectors.0.size()[0];
        if rows <= cap {
            return Ok(());
        }
        let new_cap = (cap * 2).max(rows);
        if let Device::Cuda(ordinal) = self.device {
            let bytes = new_cap as u64 * self.dim as u64 * self.kind.elt_size_in_bytes() as u64;
            crate::gpu::check_capacity(ordinal, bytes, &format!("an index of {rows} rows"))
                .map_err(IndexError::Capacity)?;
        }
        let grown = Tensor::f_zeros([new_cap, self.dim as i64], (self.kind, self.device))?;
        let used = self.rows.len() as i64;
        grown
            .narrow(0, 0, used)
            .copy_(&self.vectors.0.narrow(0, 0, used));
        self.vectors = SharedTensor(grown);
        Ok(())
    }

    /// Drops tombstoned rows from the tensor and the host tables.
    pub fn compact(&mut self) {
        let keep: Vec<i64> = (0..self.rows.len())
            .filter(|&i| self.rows[i].is_some())
            .map(|i| i as i64)
            .collect();
        let idx = Tensor::from_slice(&keep).to_device(self.device);
        let live = self.vectors.0.index_select(0, &idx);
        let cap = (keep.len() as i64 * 2).max(MIN_CAPACITY);
        let fresh = Tensor::zeros([cap, self.dim as i64], (self.kind, self.device));
        fresh.narrow(0, 0, keep.len() as i64).copy_(&live);
        self.vectors = SharedTensor(fresh);
        self.rows = std::mem::take(&mut self.rows)
            .into_iter()
            .flatten()
            .map(Some)
            .collect();
        self.docs.clear();
        for (i, row) in self.rows.iter().enumerate() {
            let row = row.as_ref().expect("compacted rows are live");
            self.docs.entry(row.doc_id.clone()).or_default().push(i);
        }
        self.dead = 0;
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
        let n = self.rows.len();
        let allowed: Option<Vec<bool>> = (self.dead > 0 || !filter.is_empty()).then(|| {
            self.rows
                .iter()
                .map(|r| r.as_ref().is_some_and(|r| filter.matches(&r.metadata)))
                .collect()
        });
        let candidates = allowed
            .as_ref()
            .map_or(n, |a| a.iter().filter(|x| **x).count());
        let k = k.min(candidates);
        if k == 0 || queries.is_empty() {
            return Ok(vec![Vec::new(); queries.len()]);
        }
        let flat: Vec<f32> = queries.iter().flatten().copied().collect();
        let mut q = Tensor::from_slice(&flat).view([queries.len() as i64, self.dim as i64]);
        if self.metric == Metric::Cosine {
            q = normalize(&q);
        }
        let db = self.vectors.0.narrow(0, 0, n as i64);
        let mut scores = q
            .to_device(self.device)
            .to_kind(self.kind)
            .f_matmul(&db.tr())?;
        if let Some(allowed) = allowed {
            let ok: Vec<u8> = allowed.iter().map(|&b| b as u8).collect();
            let ok = Tensor::from_slice(&ok)
                .to_device(self.device)
                .to_kind(Kind::Bool);
            scores = scores.f_masked_fill(&ok.logical_not(), f64::NEG_INFINITY)?;
        }
        let (values, indices) = scores.f_topk(k as i64, 1, true, true)?;
        let values: Vec<f32> = Vec::<f32>::try_from(
            values
                .to_kind(Kind::Float)
                .to_device(Device::Cpu)
                .flatten(0, -1),
        )?;
        let indices: Vec<i64> =
            Vec::<i64>::try_from(indices.to_device(Device::Cpu).flatten(0, -1))?;
        Ok(values
            .chunks(k)
            .zip(indices.chunks(k))
            .map(|(vals, idxs)| {
                vals.iter()
                    .zip(idxs)
                    .filter_map(|(&score, &i)| {
                        let row = self.rows[i as usize].as_ref()?;
                        Some(Hit {
                            row: row.clone(),
                            score,
                        })
                    })
                    .collect()
            })
            .collect())
    }

    /// Live rows with their vectors, in row order (for snapshots).
    pub fn export(&self) -> Vec<(Row, Vec<f32>)> {
        let n = self.rows.len() as i64;
        let all: Vec<f32> = Vec::<f32>::try_from(
            self.vectors
                .0
                .narrow(0, 0, n)
                .to_kind(Kind::Float)
                .to_device(Device::Cpu)
                .flatten(0, -1),
        )
        .unwrap_or_default();
        self.rows
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let r = r.as_ref()?;
                Some((r.clone(), all[i * self.dim..(i + 1) * self.dim].to_vec()))
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
