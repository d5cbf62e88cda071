//! Growing a collection's shards, and checking first that the grown tensors fit.

use super::{storage_kind, FlatIndex, SharedTensor, MIN_CAPACITY};
use crate::index::{IndexError, Placement};
use tch::{Device, Kind, Tensor};

impl FlatIndex {
    /// Checks that `extra` more rows fit: growing a shard needs the grown tensors in free
    /// memory next to the current ones (GPU shards against their device, CPU shards
    /// together against the host's memory). Writers call this before logging a write.
    pub fn check_growth(&self, extra: usize) -> Result<(), IndexError> {
        let total = self.rows.len() + extra;
        check_growths(self.shards.iter().enumerate().map(|(s, shard)| Growth {
            device: shard.device,
            cap: shard.vectors.0.size()[0],
            needed: self.shard_len(s, total) as i64,
            dim: self.dim,
            kind: self.kind,
            masked: shard.dead.is_some(),
            screened: shard.screen.is_some(),
        }))
    }

    /// [`FlatIndex::check_growth`] for a collection not created yet: whether `rows` rows
    /// of `dim` fit on `placement` once it exists.
    pub fn check_new(dim: usize, placement: &Placement, rows: usize) -> Result<(), IndexError> {
        check_fresh(
            dim,
            placement,
            storage_kind(placement.primary()),
            rows,
            false,
        )
    }

    /// Grows shard `s` to hold `rows`; on a GPU, first checks that the new tensor fits in
    /// its free memory, so a too-large collection is a clear error, not an OOM. (A CPU
    /// shard is checked before its write is logged only: refusing a logged record here
    /// would halt writes over an allocation that may well succeed.)
    pub(super) fn reserve(&mut self, s: usize, rows: i64) -> Result<(), IndexError> {
        let used = self.shard_len(s, self.rows.len()) as i64;
        let (dim, kind) = (self.dim as i64, self.kind);
        let shard = &mut self.shards[s];
        let cap = shard.vectors.0.size()[0];
        if rows <= cap {
            return Ok(());
        }
        let new_cap = (cap * 2).max(rows);
        if let Device::Cuda(ordinal) = shard.device {
            let growth = Growth {
                device: shard.device,
                cap,
                needed: rows,
                dim: self.dim,
                kind,
                masked: shard.dead.is_some(),
                screened: false,
            };
            check_shard_growth(ordinal, &growth)?;
        }
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

/// Whether a fresh collection of `rows` rows of `dim`, stored as `kind`, fits on
/// `placement` (next to whatever else is allocated, e.g. the collection it replaces).
pub(super) fn check_fresh(
    dim: usize,
    placement: &Placement,
    kind: Kind,
    rows: usize,
    count_first_allocation: bool,
) -> Result<(), IndexError> {
    let devices = placement.devices();
    // A new shard allocates at least MIN_CAPACITY rows. Building from a snapshot counts
    // them too, so that a file announcing many collections of a large dimension and few
    // rows is refused like any other that does not fit; a collection created by a write
    // is allowed its small first allocation.
    let cap = if count_first_allocation {
        0
    } else {
        MIN_CAPACITY
    };
    check_growths(devices.iter().enumerate().map(|(s, &device)| Growth {
        device,
        cap,
        needed: (((rows + devices.len() - 1 - s) / devices.len()) as i64).max(MIN_CAPACITY),
        dim,
        kind,
        masked: false,
        screened: placement.cpu_screen() && device == Device::Cpu && kind == Kind::Float,
    }))
}

/// One shard's growth to `needed` rows from capacity `cap`.
struct Growth {
    device: Device,
    cap: i64,
    needed: i64,
    dim: usize,
    kind: Kind,
    masked: bool,
    screened: bool,
}

impl Growth {
    /// Bytes of the grown tensors, 0 when the shard has room.
    fn bytes(&self) -> u64 {
        if self.needed <= self.cap {
            return 0;
        }
        let bytes = growth_bytes(self.cap, self.needed, self.dim, self.kind, self.masked);
        let screen = match self.screened {
            true => growth_bytes(self.cap, self.needed, self.dim, Kind::BFloat16, false),
            false => 0,
        };
        bytes + screen
    }
}

/// Whether the shards can grow: each GPU shard's grown tensors (vectors, and the
/// tombstone mask when it has one) must fit on its device next to the current ones, which
/// stay until the copy is done; the CPU shards' together in the host's memory.
fn check_growths(growths: impl Iterator<Item = Growth>) -> Result<(), IndexError> {
    let (mut host_bytes, mut host_rows) = (0u64, 0i64);
    for g in growths {
        match g.device {
            Device::Cuda(ordinal) => check_shard_growth(ordinal, &g)?,
            _ if g.needed > g.cap => {
                host_bytes += g.bytes();
                host_rows += g.needed;
            }
            _ => {}
        }
    }
    if host_bytes == 0 {
        return Ok(());
    }
    crate::host::check_capacity(
        host_bytes,
        &format!("growing the index to {host_rows} rows"),
    )
    .map_err(IndexError::Capacity)
}

/// [`check_growths`] for one GPU shard (also checked when it grows).
fn check_shard_growth(ordinal: usize, g: &Growth) -> Result<(), IndexError> {
    if g.needed <= g.cap {
        return Ok(());
    }
    let what = format!("a shard of {} rows", g.needed);
    crate::gpu::check_capacity(ordinal, g.bytes(), &what).map_err(IndexError::Capacity)
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
