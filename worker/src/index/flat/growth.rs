//! Growing a collection's shards, and checking first that the grown tensors fit.

use super::{storage_kind, FlatIndex, SharedTensor, MIN_CAPACITY};
use crate::index::{IndexError, Placement};
use tch::{Device, Kind, Tensor};

impl FlatIndex {
    /// Checks that `extra` more rows fit: on a GPU, growing a shard needs the grown tensor
    /// in free memory next to the current one. Writers call this before logging a write.
    pub fn check_growth(&self, extra: usize) -> Result<(), IndexError> {
        let total = self.rows.len() + extra;
        for (s, shard) in self.shards.iter().enumerate() {
            let needed = self.shard_len(s, total) as i64;
            check_shard_growth(
                shard.device,
                shard.vectors.0.size()[0],
                needed,
                self.dim,
                self.kind,
                shard.dead.is_some(),
            )?;
        }
        Ok(())
    }

    /// [`FlatIndex::check_growth`] for a collection not created yet: whether `rows` rows
    /// of `dim` fit on `placement` once it exists.
    pub fn check_new(dim: usize, placement: &Placement, rows: usize) -> Result<(), IndexError> {
        let devices = placement.devices();
        let kind = storage_kind(placement.primary());
        for (s, &device) in devices.iter().enumerate() {
            let needed = (rows + devices.len() - 1 - s) / devices.len();
            check_shard_growth(device, MIN_CAPACITY, needed as i64, dim, kind, false)?;
        }
        Ok(())
    }

    /// Grows shard `s` to hold `rows`; on a GPU, first checks that the new tensor fits in
    /// its free memory, so a too-large collection is a clear error, not an OOM.
    pub(super) fn reserve(&mut self, s: usize, rows: i64) -> Result<(), IndexError> {
        let used = self.shard_len(s, self.rows.len()) as i64;
        let (dim, kind) = (self.dim as i64, self.kind);
        let shard = &mut self.shards[s];
        let cap = shard.vectors.0.size()[0];
        if rows <= cap {
            return Ok(());
        }
        let new_cap = (cap * 2).max(rows);
        let masked = shard.dead.is_some();
        check_shard_growth(shard.device, cap, rows, self.dim, kind, masked)?;
        let grown = Tensor::f_zeros([new_cap, dim], (kind, shard.device))?;
        grown
            .f_narrow(0, 0, used)?
            .f_copy_(&shard.vectors.0.f_narrow(0, 0, used)?)?;
        // Both grown tensors exist before either replaces the old one: a failure leaves
        // the shard as it was.
        let grown_mask = match &shard.dead {
            Some(mask) => {
                let m = Tensor::f_zeros([new_cap], (Kind::Bool, shard.device))?;
                m.f_narrow(0, 0, used)?
                    .f_copy_(&mask.0.f_narrow(0, 0, used)?)?;
                Some(SharedTensor(m))
            }
            None => None,
        };
        let grown_screen = match &shard.screen {
            Some(screen) => {
                let t = Tensor::f_zeros([new_cap, dim], (Kind::BFloat16, shard.device))?;
                t.f_narrow(0, 0, used)?
                    .f_copy_(&screen.0.f_narrow(0, 0, used)?)?;
                Some(SharedTensor(t))
            }
            None => None,
        };
        shard.vectors = SharedTensor(grown);
        shard.dead = grown_mask;
        shard.screen = grown_screen;
        Ok(())
    }
}

/// Whether a shard on `device` of capacity `cap` can grow to `needed` rows: on a GPU the
/// grown tensors (vectors, and the tombstone mask when the shard has one) must fit next to
/// the current ones, which stay until the copy is done.
fn check_shard_growth(
    device: Device,
    cap: i64,
    needed: i64,
    dim: usize,
    kind: Kind,
    masked: bool,
) -> Result<(), IndexError> {
    let Device::Cuda(ordinal) = device else {
        return Ok(());
    };
    if needed <= cap {
        return Ok(());
    }
    let bytes = growth_bytes(cap, needed, dim, kind, masked);
    crate::gpu::check_capacity(ordinal, bytes, &format!("a shard of {needed} rows"))
        .map_err(IndexError::Capacity)
}

/// Bytes a shard of capacity `cap` allocates to grow to `needed` rows (capacity doubles).
pub(in crate::index) fn growth_bytes(
    cap: i64,
    needed: i64,
    dim: usize,
    kind: Kind,
    masked: bool,
) -> u64 {
    let new_cap = u64::try_from((cap * 2).max(needed)).unwrap_or(0);
    let row = dim as u64 * kind.elt_size_in_bytes() as u64 + u64::from(masked);
    new_cap * row
}
