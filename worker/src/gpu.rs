//! GPU discovery and memory figures through the CUDA driver API (`cudarc`, which loads the
//! driver library at run time). A machine without the driver simply has no GPUs: nothing
//! here fails or panics there. The driver honours `CUDA_VISIBLE_DEVICES`, so ordinals are
//! the ones libtorch uses.

use cudarc::driver::{result, sys, CudaContext, DriverError};
use std::sync::OnceLock;

/// One visible GPU.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GpuInfo {
    /// Ordinal as the process sees it (after `CUDA_VISIBLE_DEVICES`), as in `cuda:N`.
    pub ordinal: usize,
    pub name: String,
    pub total_bytes: u64,
    pub free_bytes: u64,
}

/// Whether the CUDA driver library can be loaded (checked once).
pub fn driver_present() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    // SAFETY: only tries to dlopen the driver library under its known names; no CUDA
    // function is called.
    *PRESENT.get_or_init(|| unsafe { sys::is_culib_present() })
}

/// Every visible GPU with its memory; empty without a driver or a device.
pub fn devices() -> Vec<GpuInfo> {
    if !driver_present() {
        return Vec::new();
    }
    let count = match CudaContext::device_count() {
        Ok(n) => usize::try_from(n).unwrap_or(0),
        Err(e) => {
            tracing::debug!(error = %e, "CUDA driver present but not usable");
            return Vec::new();
        }
    };
    (0..count)
        .filter_map(|ordinal| match info(ordinal) {
            Ok(info) => Some(info),
            Err(e) => {
                tracing::warn!(ordinal, error = %e, "cannot query GPU");
                None
            }
        })
        .collect()
}

fn info(ordinal: usize) -> Result<GpuInfo, DriverError> {
    // The primary context, shared with libtorch's.
    let ctx = CudaContext::new(ordinal)?;
    ctx.bind_to_thread()?;
    let (free, total) = result::mem_get_info()?;
    Ok(GpuInfo {
        ordinal,
        name: ctx.name()?,
        total_bytes: total as u64,
        free_bytes: free as u64,
    })
}

/// Fails with a message that names the GPU and the sizes when `bytes` more would not fit
/// in its free memory (checked before an index is loaded onto it).
pub fn check_capacity(ordinal: usize, bytes: u64, what: &str) -> Result<(), String> {
    let Some(gpu) = devices().into_iter().find(|g| g.ordinal == ordinal) else {
        return Err(format!("{what}: GPU cuda:{ordinal} is not visible"));
    };
    if bytes > gpu.free_bytes {
        return Err(format!(
            "{what} needs {:.2} GiB on cuda:{ordinal} ({}), which has {:.2} of {:.2} GiB free: \
             use more GPUs per replica, a larger GPU, or the CPU index",
            gib(bytes),
            gpu.name,
            gib(gpu.free_bytes),
            gib(gpu.total_bytes)
        ));
    }
    Ok(())
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 30)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_agrees_with_libtorch_and_reports_memory() {
        // Both see the same devices (zero on a machine without CUDA).
        let torch = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
        let gpus = devices();
        assert_eq!(gpus.len(), torch, "{gpus:?}");
        for (i, gpu) in gpus.iter().enumerate() {
            assert_eq!(gpu.ordinal, i);
            assert!(gpu.total_bytes > 0 && gpu.free_bytes <= gpu.total_bytes);
        }
    }

    #[test]
    fn capacity_checks_name_the_gpu_and_refuse_what_cannot_fit() {
        let err = check_capacity(usize::MAX, 1, "index of collection c").unwrap_err();
        assert!(err.contains("is not visible"), "{err}");
        if let Some(gpu) = devices().first() {
            let err = check_capacity(gpu.ordinal, gpu.total_bytes + 1, "index").unwrap_err();
            assert!(err.contains(&gpu.name), "{err}");
            assert!(check_capacity(gpu.ordinal, 1, "index").is_ok());
        }
    }
}
