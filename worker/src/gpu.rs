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
    /// Free as the driver sees it.
    pub free_bytes: u64,
    /// Held by libtorch's caching allocator in freed blocks: counted as used by the driver,
    /// yet available to this process's next tensors (0 before the first allocation).
    pub cached_bytes: u64,
}

impl GpuInfo {
    /// What a new tensor of this process can get: the driver's free memory plus libtorch's
    /// cached free blocks.
    pub fn available_bytes(&self) -> u64 {
        self.free_bytes.saturating_add(self.cached_bytes)
    }
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

/// How often [`sampled_devices`] refreshes.
pub const SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The GPUs as last sampled by a background thread (every [`SAMPLE_EVERY`]), for metrics:
/// a scrape never binds a CUDA context on the async thread serving it, nor waits on the
/// driver. Empty without a driver, and until the first sample is in.
pub fn sampled_devices() -> Vec<GpuInfo> {
    static SAMPLES: OnceLock<Option<std::sync::Arc<parking_lot::Mutex<Vec<GpuInfo>>>>> =
        OnceLock::new();
    let samples = SAMPLES.get_or_init(|| {
        if !driver_present() {
            return None;
        }
        let cell = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
        let writer = std::sync::Arc::clone(&cell);
        let spawned = std::thread::Builder::new()
            .name("kb-gpu-sampler".into())
            .spawn(move || loop {
                let now = devices();
                *writer.lock() = now;
                std::thread::sleep(SAMPLE_EVERY);
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the GPU sampler; GPU metrics are off");
        }
        Some(cell)
    });
    samples
        .as_ref()
        .map(|cell| cell.lock().clone())
        .unwrap_or_default()
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
        cached_bytes: kb_embed::cuda_alloc::allocator_stats(ordinal)
            .map(|stats| stats.cached())
            .unwrap_or(0),
    })
}

/// The CUDA driver's version (`13.0` for 13000), if the driver library loads.
pub fn driver_version() -> Option<String> {
    if !driver_present() {
        return None;
    }
    let mut version: std::ffi::c_int = 0;
    // SAFETY: the driver library is present; cuDriverGetVersion only writes the int it is
    // given and needs no initialised context.
    let status = unsafe { sys::cuDriverGetVersion(&mut version) };
    (status == sys::CUresult::CUDA_SUCCESS && version > 0)
        .then(|| format!("{}.{}", version / 1000, (version % 1000) / 10))
}

/// The CUDA version the loaded libtorch was built for (`13.0`), `None` for a CPU-only
/// build or when it cannot be told: read next to the libtorch library this process
/// mapped (`torch/version.py` of a PyTorch wheel, or `build-version` of a libtorch zip).
pub fn torch_cuda_build() -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let lib = maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| path.ends_with("/libtorch_cpu.so") || path.ends_with("/libtorch.so"))?;
    let root = std::path::Path::new(lib).parent()?.parent()?;
    if let Ok(version) = std::fs::read_to_string(root.join("version.py")) {
        return version
            .lines()
            .find(|l| l.starts_with("cuda"))
            .and_then(|l| l.split('\'').nth(1))
            .map(str::to_string);
    }
    let build = std::fs::read_to_string(root.join("build-version")).ok()?;
    let cuda = build.trim().split("+cu").nth(1)?;
    (cuda.len() >= 3).then(|| format!("{}.{}", &cuda[..cuda.len() - 1], &cuda[cuda.len() - 1..]))
}

/// What the CUDA driver (through cudarc) and libtorch each see: when they disagree, the
/// driver is too old for this libtorch's CUDA, or libtorch is a CPU-only build.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DeviceViews {
    pub cuda_driver: bool,
    pub driver_version: Option<String>,
    pub gpus: Vec<GpuInfo>,
    pub libtorch_cuda_devices: usize,
    pub libtorch_cuda_build: Option<String>,
}

impl DeviceViews {
    pub fn probe() -> DeviceViews {
        DeviceViews {
            cuda_driver: driver_present(),
            driver_version: driver_version(),
            gpus: devices(),
            libtorch_cuda_devices: usize::try_from(tch::Cuda::device_count()).unwrap_or(0),
            libtorch_cuda_build: torch_cuda_build(),
        }
    }

    /// Why CUDA cannot be used, in words an operator can act on.
    pub fn explain(&self) -> String {
        let driver = match (&self.cuda_driver, &self.driver_version) {
            (false, _) => "no CUDA driver library is loadable (no GPU, or the NVIDIA driver is not mounted into the container)".to_string(),
            (true, v) => format!(
                "the CUDA driver{} sees {} GPU(s){}",
                v.as_ref().map(|v| format!(" ({v})")).unwrap_or_default(),
                self.gpus.len(),
                if self.gpus.is_empty() {
                    String::new()
                } else {
                    format!(
                        ": {}",
                        self.gpus.iter().map(|g| g.name.as_str()).collect::<Vec<_>>().join(", ")
                    )
                }
            ),
        };
        let torch = match &self.libtorch_cuda_build {
            Some(cuda) => format!(
                "libtorch (built for CUDA {cuda}) sees {}",
                self.libtorch_cuda_devices
            ),
            None => format!(
                "libtorch (a CPU-only build, or its CUDA version is unknown) sees {}",
                self.libtorch_cuda_devices
            ),
        };
        let hint = if !self.gpus.is_empty() && self.libtorch_cuda_devices == 0 {
            match &self.libtorch_cuda_build {
                Some(cuda) => format!(
                    "; the driver is probably older than CUDA {cuda} needs (CUDA 13.0 needs driver >= 580): upgrade the node's driver or use an image built for an older CUDA"
                ),
                None => "; install a CUDA build of libtorch".into(),
            }
        } else {
            String::new()
        };
        format!("{driver}; {torch}{hint}")
    }
}

/// Fails with a message that names the GPU and the sizes when `bytes` more would not fit
/// in what it has available (checked before an index is loaded onto it or grown).
pub fn check_capacity(ordinal: usize, bytes: u64, what: &str) -> Result<(), String> {
    let Some(gpu) = devices().into_iter().find(|g| g.ordinal == ordinal) else {
        return Err(format!("{what}: GPU cuda:{ordinal} is not visible"));
    };
    fits(&gpu, bytes, what)
}

/// [`check_capacity`] against given figures. The caching allocator's free blocks count as
/// available: libtorch serves new tensors from them before it asks the driver.
fn fits(gpu: &GpuInfo, bytes: u64, what: &str) -> Result<(), String> {
    if bytes > gpu.available_bytes() {
        return Err(format!(
            "{what} needs {:.2} GiB on cuda:{} ({}), which has {:.2} of {:.2} GiB available \
             ({:.2} GiB free on the device, {:.2} GiB cached by libtorch): use more GPUs per \
             replica, a larger GPU, or the CPU index",
            gib(bytes),
            gpu.ordinal,
            gpu.name,
            gib(gpu.available_bytes()),
            gib(gpu.total_bytes),
            gib(gpu.free_bytes),
            gib(gpu.cached_bytes),
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
    fn the_device_views_explain_a_driver_libtorch_mismatch() {
        let gpu = GpuInfo {
            ordinal: 0,
            name: "NVIDIA H200".into(),
            total_bytes: 1,
            free_bytes: 1,
            cached_bytes: 0,
        };
        let views = DeviceViews {
            cuda_driver: true,
            driver_version: Some("12.8".into()),
            gpus: vec![gpu],
            libtorch_cuda_devices: 0,
            libtorch_cuda_build: Some("13.0".into()),
        };
        let text = views.explain();
        for needle in [
            "12.8",
            "1 GPU(s): NVIDIA H200",
            "CUDA 13.0) sees 0",
            "driver >= 580",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from {text}");
        }
        let none = DeviceViews {
            cuda_driver: false,
            driver_version: None,
            gpus: Vec::new(),
            libtorch_cuda_devices: 0,
            libtorch_cuda_build: None,
        };
        assert!(
            none.explain().contains("no CUDA driver library"),
            "{}",
            none.explain()
        );
    }

    #[test]
    fn the_libtorch_cuda_build_is_what_its_python_package_says() {
        // The tests link the venv's torch (LIBTORCH_USE_PYTORCH): read next to the mapped
        // library, its CUDA build must be what `torch.version.cuda` says.
        let _ = tch::Cuda::device_count();
        let python = std::env::var("VIRTUAL_ENV")
            .map_or_else(|_| "python3".to_string(), |v| format!("{v}/bin/python"));
        let out = std::process::Command::new(python)
            .args(["-c", "import torch; print(torch.version.cuda)"])
            .output()
            .expect("the venv's python runs (make setup)");
        let expected = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let found = torch_cuda_build().unwrap_or_else(|| "None".into());
        assert_eq!(found, expected);
    }

    #[test]
    fn libtorch_cached_blocks_count_as_available_memory() {
        const GIB: u64 = 1 << 30;
        let gpu = GpuInfo {
            ordinal: 3,
            name: "NVIDIA H200".into(),
            total_bytes: 140 * GIB,
            free_bytes: 10 * GIB,
            cached_bytes: 6 * GIB,
        };
        // More than the driver's free figure, less than free + cached: fits.
        assert!(fits(&gpu, 15 * GIB, "a shard of 1 rows").is_ok());
        let err = fits(&gpu, 17 * GIB, "a shard of 20000000 rows").unwrap_err();
        for part in [
            "a shard of 20000000 rows needs 17.00 GiB on cuda:3 (NVIDIA H200)",
            "16.00 of 140.00 GiB available",
            "10.00 GiB free on the device, 6.00 GiB cached by libtorch",
        ] {
            assert!(err.contains(part), "{part:?} in {err}");
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
