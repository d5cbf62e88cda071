//! libtorch's CUDA caching allocator, through the small C shim in `csrc/cuda_alloc.cpp`
//! (tch exposes neither call).
//!
//! libtorch keeps freed GPU blocks cached for reuse, so the driver's "free" figure
//! understates what a new tensor can get, and after an out-of-memory error the cache may
//! hold fragments that no smaller retry fits in. [`empty_cache`] hands cached blocks back to
//! the driver; [`allocator_stats`] reports what the allocator holds and what live tensors
//! use. On a CPU-only build, or before anything has been allocated on a GPU, both answer
//! "nothing to do" rather than fail.

use std::os::raw::c_int;

extern "C" {
    fn kb_cuda_empty_cache() -> c_int;
    fn kb_cuda_allocator_stats(device: c_int, reserved: *mut i64, allocated: *mut i64) -> c_int;
}

/// What the caching allocator holds on one GPU, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocatorStats {
    /// Held from the driver: live tensors plus cached free blocks.
    pub reserved: u64,
    /// In live tensors.
    pub allocated: u64,
}

impl AllocatorStats {
    /// Cached free blocks: memory the driver counts as used that a new tensor can still get.
    pub fn cached(&self) -> u64 {
        self.reserved.saturating_sub(self.allocated)
    }
}

/// Releases libtorch's cached free GPU blocks to the driver (every GPU). Returns whether
/// there was an initialised CUDA allocator to release from.
pub fn empty_cache() -> bool {
    // SAFETY: the shim takes no arguments and catches every C++ exception.
    let done = unsafe { kb_cuda_empty_cache() };
    if done < 0 {
        tracing::warn!("libtorch refused to empty its CUDA cache");
    }
    done > 0
}

/// The caching allocator's figures for GPU `ordinal`; `None` where libtorch has no CUDA
/// allocator in use (CPU-only build, no GPU, nothing allocated yet) or no such device.
pub fn allocator_stats(ordinal: usize) -> Option<AllocatorStats> {
    let device = c_int::try_from(ordinal).ok()?;
    let (mut reserved, mut allocated) = (0i64, 0i64);
    // SAFETY: both pointers are to live locals; the shim writes them only on success and
    // catches every C++ exception.
    let ok = unsafe { kb_cuda_allocator_stats(device, &mut reserved, &mut allocated) };
    (ok > 0).then(|| AllocatorStats {
        reserved: u64::try_from(reserved).unwrap_or(0),
        allocated: u64::try_from(allocated).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor};

    #[test]
    fn the_caching_allocator_is_reported_and_emptied_where_cuda_is_in_use() {
        if !tch::Cuda::is_available() {
            // No CUDA allocator is registered or initialised: both calls answer "nothing
            // here" instead of throwing through the C boundary (which would abort).
            assert!(!empty_cache());
            assert_eq!(allocator_stats(0), None);
            return;
        }
        let before = allocator_stats(0);
        let t = Tensor::zeros([64, 1 << 20], (Kind::Float, Device::Cuda(0))); // 256 MiB
        let held = allocator_stats(0).expect("an allocation initialises the allocator");
        assert!(held.allocated >= 256 << 20, "{held:?}");
        drop(t);
        let cached = allocator_stats(0).unwrap();
        assert!(
            cached.cached() >= 256 << 20,
            "a freed tensor stays cached: {cached:?}"
        );
        assert!(empty_cache());
        let emptied = allocator_stats(0).unwrap();
        assert!(
            emptied.reserved + (256 << 20) <= cached.reserved,
            "empty_cache gave the block back: {before:?} {cached:?} {emptied:?}"
        );
        assert_eq!(allocator_stats(1000), None, "no such device");
    }
}
