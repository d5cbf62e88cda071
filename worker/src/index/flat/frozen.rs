//! A frozen view of a collection: what a snapshot exports while the index moves on.

use super::Row;
use crate::index::IndexError;
use crate::log::Metric;
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// A frozen view of one collection (see [`super::FlatIndex::freeze`]).
pub struct Frozen {
    pub dim: usize,
    pub metric: Metric,
    pub(super) shards: Vec<Tensor>,
    pub(super) rows: Vec<Option<Arc<Row>>>,
}

/// Live rows of a collection with their vectors, one piece of it (see [`Frozen::chunks`]).
pub struct Chunk {
    pub rows: Vec<Arc<Row>>,
    /// The rows' vectors, row-major fp32 (`rows.len() * dim` values).
    pub vectors: Vec<f32>,
}

/// Rows a chunk covers (live or not): 4,096 x 384 fp32 is 6 MiB of host memory.
pub const CHUNK_ROWS: usize = 4096;

impl Frozen {
    /// Live rows (not tombstoned).
    pub fn live(&self) -> usize {
        self.rows.iter().filter(|r| r.is_some()).count()
    }

    /// Live rows with their vectors, in row order, [`CHUNK_ROWS`] rows of the collection
    /// at a time: the host never holds more than one chunk's vectors, whatever the size
    /// of the collection. A device error (no host memory for the copy, say) is an error,
    /// never a silently shorter export.
    pub fn chunks(&self) -> impl Iterator<Item = Result<Chunk, IndexError>> + '_ {
        (0..self.rows.len())
            .step_by(CHUNK_ROWS)
            .map(|start| self.chunk(start, (start + CHUNK_ROWS).min(self.rows.len())))
    }

    /// Live rows `start..end` of the collection.
    fn chunk(&self, start: usize, end: usize) -> Result<Chunk, IndexError> {
        let (n, dim) = (self.shards.len(), self.dim);
        // Row i is on shard i % n at position i / n; shard s holds positions
        // first(s)..first(s) + len of this range.
        let first = |s: usize, total: usize| (total + n - 1 - s) / n;
        let per_shard: Vec<Vec<f32>> = self
            .shards
            .iter()
            .enumerate()
            .map(|(s, t)| {
                let (from, to) = (first(s, start), first(s, end));
                let host = t
                    .f_narrow(0, from as i64, (to - from) as i64)?
                    .f_to_kind(Kind::Float)?
                    .f_to_device(Device::Cpu)?
                    .f_contiguous()?
                    .f_flatten(0, -1)?;
                Ok(Vec::<f32>::try_from(host)?)
            })
            .collect::<Result<_, IndexError>>()?;
        let mut chunk = Chunk {
            rows: Vec::new(),
            vectors: Vec::new(),
        };
        for i in start..end {
            let Some(row) = self.rows[i].as_ref() else {
                continue;
            };
            let (s, j) = (i % n, i / n - first(i % n, start));
            let v = per_shard[s]
                .get(j * dim..(j + 1) * dim)
                .ok_or_else(|| IndexError::Aborted(format!("row {i} is missing from shard {s}")))?;
            chunk.rows.push(Arc::clone(row));
            chunk.vectors.extend_from_slice(v);
        }
        Ok(chunk)
    }

    /// Live rows with their vectors (fp32), in row order: the whole collection copied to
    /// the host (tests and small collections; snapshots and compaction use
    /// [`Frozen::chunks`]).
    pub fn export(&self) -> Result<Vec<(Row, Vec<f32>)>, IndexError> {
        let mut out = Vec::with_capacity(self.rows.len());
        for chunk in self.chunks() {
            let chunk = chunk?;
            let vectors = chunk.vectors.chunks_exact(self.dim.max(1));
            for (row, v) in chunk.rows.iter().zip(vectors) {
                out.push((Row::clone(row), v.to_vec()));
            }
        }
        Ok(out)
    }
}
