//! Which devices the engine runs on, and in what precision.

use crate::{EmbedError, Precision};
use tch::{Device, Kind};

/// Resolves a device spec (`cpu`, `cuda`, `cuda:N`, `cuda:0,1`, `auto`) against the
/// number of visible CUDA devices.
pub fn parse_devices(spec: &str, cuda_count: usize) -> Result<Vec<Device>, EmbedError> {
    let spec = spec.trim();
    match spec {
        "cpu" => Ok(vec![Device::Cpu]),
        "auto" if cuda_count == 0 => Ok(vec![Device::Cpu]),
        "auto" | "cuda" => all_cuda(cuda_count),
        _ => match spec.strip_prefix("cuda:") {
            Some(list) => listed_cuda(list, cuda_count),
            None => Err(EmbedError::Device(format!(
                "unknown device {spec:?}: expected cpu, cuda, cuda:0,1 or auto"
            ))),
        },
    }
}

fn all_cuda(cuda_count: usize) -> Result<Vec<Device>, EmbedError> {
    if cuda_count == 0 {
        return Err(EmbedError::Device(
            "device \"cuda\" requested but libtorch sees no CUDA device \
             (no GPU, driver missing, or a CPU-only libtorch)"
                .into(),
        ));
    }
    Ok((0..cuda_count).map(Device::Cuda).collect())
}

fn listed_cuda(list: &str, cuda_count: usize) -> Result<Vec<Device>, EmbedError> {
    let mut devices = Vec::new();
    for part in list.split(',') {
        let index: usize = part.trim().parse().map_err(|_| {
            EmbedError::Device(format!("bad CUDA device index {part:?} in cuda:{list}"))
        })?;
        if index >= cuda_count {
            return Err(EmbedError::Device(format!(
                "cuda:{index} requested but only {cuda_count} CUDA device(s) are visible"
            )));
        }
        if !devices.contains(&Device::Cuda(index)) {
            devices.push(Device::Cuda(index));
        }
    }
    Ok(devices)
}

/// The tensor kind of a replica: `Auto` is fp16 on CUDA, and on CPU bf16 where the CPU
/// computes bf16 natively ([`cpu_has_native_bf16`]), else fp32.
pub fn resolve_kind(precision: Precision, device: Device) -> Kind {
    resolve_kind_on(precision, device, cpu_has_native_bf16())
}

/// Whether this CPU has bf16 dot-product instructions (AVX512-BF16 or AMX-BF16), with
/// which libtorch's bf16 matrix products run faster than fp32 ones. Measured on the
/// 2-core development machine (AMX): 1.6x the passages/s of fp32, worst cosine to
/// sentence-transformers' fp32 vectors 0.9999 (docs/benchmarks.md). Without them bf16 is
/// emulated and slower than fp32.
pub fn cpu_has_native_bf16() -> bool {
    static NATIVE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *NATIVE.get_or_init(|| {
        std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| {
            info.lines()
                .find(|line| line.starts_with("flags"))
                .is_some_and(|flags| {
                    flags
                        .split_whitespace()
                        .any(|f| f == "avx512_bf16" || f == "amx_bf16")
                })
        })
    })
}

fn resolve_kind_on(precision: Precision, device: Device, native_bf16: bool) -> Kind {
    match (precision, device) {
        (Precision::Auto, Device::Cpu) if native_bf16 => Kind::BFloat16,
        (Precision::Auto, Device::Cpu) | (Precision::Fp32, _) => Kind::Float,
        (Precision::Auto, _) | (Precision::Fp16, _) => Kind::Half,
        (Precision::Bf16, _) => Kind::BFloat16,
    }
}

/// The padded tokens per batch a device runs fastest with, if it prefers fewer than a
/// configured budget allows. On CPU, batches much beyond a couple of thousand tokens fall
/// out of cache (a 16k-token batch ran at less than half the tokens/s of a 2k one on a
/// 2-core AVX-512 host), while GPUs want the largest batch that fits.
pub fn preferred_batch_tokens(device: Device) -> Option<usize> {
    match device {
        Device::Cpu => Some(2048),
        _ => None,
    }
}

/// The largest bulk batch worth running on `device` when the config leaves it open and
/// nothing was measured (`Embedder::load` measures it on the CPU: `calibrate::budget`): on
/// CPU a batch of 1024 tokens takes tens of milliseconds, the most a query should wait
/// behind ingestion; GPUs take the full budget.
pub fn preferred_bulk_batch_tokens(device: Device) -> Option<usize> {
    match device {
        Device::Cpu => Some(1024),
        _ => None,
    }
}

/// The device's name in stats and logs: `cpu`, `cuda:0`, ...
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        Device::Cpu => "cpu".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// The precision's config name, for benchmark records.
pub fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Half => "fp16",
        Kind::BFloat16 => "bf16",
        _ => "fp32",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_falls_back_to_cpu_without_gpus() {
        assert_eq!(parse_devices("auto", 0).unwrap(), vec![Device::Cpu]);
        assert_eq!(
            parse_devices("auto", 2).unwrap(),
            vec![Device::Cuda(0), Device::Cuda(1)]
        );
    }

    #[test]
    fn cuda_without_gpus_is_a_device_error() {
        let err = parse_devices("cuda", 0).unwrap_err();
        assert!(
            matches!(&err, EmbedError::Device(m) if m.contains("no CUDA device")),
            "{err}"
        );
    }

    #[test]
    fn listed_gpus_are_checked_and_deduplicated() {
        assert_eq!(
            parse_devices("cuda:1, 0,1", 2).unwrap(),
            vec![Device::Cuda(1), Device::Cuda(0)]
        );
        assert!(parse_devices("cuda:2", 2).is_err());
        assert!(parse_devices("cuda:x", 2).is_err());
        assert!(parse_devices("tpu", 2).is_err());
    }

    #[test]
    fn auto_precision_is_bf16_on_native_bf16_cpus_fp32_elsewhere_and_fp16_on_cuda() {
        assert_eq!(
            resolve_kind_on(Precision::Auto, Device::Cpu, false),
            Kind::Float
        );
        assert_eq!(
            resolve_kind_on(Precision::Auto, Device::Cpu, true),
            Kind::BFloat16
        );
        assert_eq!(
            resolve_kind_on(Precision::Auto, Device::Cuda(0), true),
            Kind::Half
        );
        assert_eq!(
            resolve_kind_on(Precision::Bf16, Device::Cpu, false),
            Kind::BFloat16
        );
        assert_eq!(
            resolve_kind_on(Precision::Fp32, Device::Cpu, true),
            Kind::Float
        );
    }
}
