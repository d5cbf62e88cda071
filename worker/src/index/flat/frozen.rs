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

impl Frozen {
    /// Live rows with their vectors (fp32), in row order. A device error (e.g. no host
    /// memory for the copy) is an error, never a silently shorter export.
    pub fn export(&self) -> Result<Vec<(Row, Vec<f32>)>, IndexError> {
        let n = self.shards.len();
        let per_shard: Vec<Vec<f32>> = self
            .shards
            .iter()
            .map(|t| {
                let host = t
                    .f_to_kind(Kind::Float)?
                    .f_to_device(Device::Cpu)?
                    .f_flatten(0, -1)?;
                Ok(Vec::<f32>::try_from(host)?)
            })
            .collect::<Result<_, IndexError>>()?;
        let dim = self.dim;
        let mut out = Vec::with_capacity(self.rows.len());
        for (i, r) in self.rows.iter().enumerate() {
            let Some(r) = r.as_ref() else { continue };
            let (s, j) = (i % n, i / n);
            let v = per_shard[s]
                .get(j * dim..(j + 1) * dim)
                .ok_or_else(|| IndexError::Aborted(format!("row {i} is missing from shard {s}")))?;
            out.push((Row::clone(r), v.to_vec()));
        }
        Ok(out)
    }
}
