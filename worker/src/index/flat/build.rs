//! Building a collection from rows that arrive in pieces (a snapshot being read, a
//! compaction), so that no host copy of all its vectors exists at once: the shards are
//! sized for the final row count first (after checking that it fits), then filled a
//! piece at a time.

use super::{growth, FlatIndex, Row};
use crate::index::{IndexError, Placement};
use crate::log::Metric;
use std::sync::Arc;
use tch::{Kind, Tensor};

/// A collection being filled (see [`FlatIndex::builder`]).
pub struct Builder {
    index: FlatIndex,
    expected: usize,
}

impl FlatIndex {
    /// A builder of a collection that will hold `rows` rows: checks that their tensors fit
    /// (host memory for CPU shards, device memory for GPU shards; a
    /// [`IndexError::Capacity`] names what to change) and allocates them at that size.
    pub fn builder(
        dim: usize,
        metric: Metric,
        placement: impl Into<Placement>,
        kind: Kind,
        rows: usize,
    ) -> Result<Builder, IndexError> {
        let placement = placement.into();
        growth::check_fresh(dim, &placement, kind, rows, true)?;
        let mut index = Self::with_kind(dim, metric, placement, kind)?;
        for s in 0..index.shards.len() {
            let len = index.shard_len(s, rows) as i64;
            index.reserve(s, len)?;
        }
        Ok(Builder {
            index,
            expected: rows,
        })
    }
}

impl Builder {
    /// Appends `rows` with their row-major fp32 `vectors` (stored as given: they were
    /// normalised when first inserted).
    pub fn push(&mut self, rows: Vec<Arc<Row>>, vectors: &[f32]) -> Result<(), IndexError> {
        let index = &mut self.index;
        if vectors.len() != rows.len() * index.dim {
            return Err(IndexError::Aborted(format!(
                "{} values for {} rows of dimension {}",
                vectors.len(),
                rows.len(),
                index.dim
            )));
        }
        if rows.is_empty() {
            return Ok(());
        }
        let start = index.rows.len();
        let data = Tensor::f_from_slice(vectors)?.f_view([rows.len() as i64, index.dim as i64])?;
        index.store_rows(start, &data)?;
        for row in rows {
            index.push_row(row);
        }
        Ok(())
    }

    /// The collection, once every announced row has been pushed.
    pub fn finish(self) -> Result<FlatIndex, IndexError> {
        if self.index.rows.len() != self.expected {
            return Err(IndexError::Aborted(format!(
                "{} rows announced, {} received",
                self.expected,
                self.index.rows.len()
            )));
        }
        Ok(self.index)
    }
}
