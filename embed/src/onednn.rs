//! oneDNN's linear layer with packed weights and a fused activation, through the small C
//! shim in `csrc/onednn_linear.cpp` (libtorch registers both operators outside ATen's
//! native functions, so tch has no binding for them).
//!
//! On the CPU in bf16, `torch.nn.functional.linear` hands each product to oneDNN with the
//! weight in its plain layout, which oneDNN reorders into its blocked one at every call,
//! and GELU then makes another pass over the intermediate activations. Packing each weight
//! once at load ([`pack`]) and applying GELU as a post-op of the product ([`linear`])
//! raised bf16 bulk embedding by about a fifth and text-query throughput by 1.4-2x on an
//! Intel Xeon with AMX (docs/benchmarks.md, "Packed bf16 weights on the CPU"). In fp32 it
//! depends on the CPU: no faster than libtorch's plain product (MKL) on that Xeon, 2.3x
//! faster on an AMD EPYC, where MKL does not use AVX-512; so the encoder packs bf16 weights
//! on every CPU and fp32 ones where [`fp32_packing_pays`] measured it faster.

use std::ffi::{c_char, c_void, CStr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tch::{Device, Kind, TchError, Tensor};

/// `1` or `0`: pack fp32 weights, or not, without measuring ([`fp32_packing_pays`]).
pub const FP32_PACKED_ENV: &str = "KB_CPU_FP32_PACKED";

/// Packed fp32 products are used where they take at most this share of the plain ones'
/// time: where the two are close (MKL on an Intel Xeon), the plain product stays.
const FP32_PACKED_MAX_SHARE: f64 = 0.85;

extern "C" {
    fn kb_onednn_pack_linear_weight(weight: *const c_void, packed: *mut *mut c_void)
        -> *mut c_char;
    fn kb_onednn_linear(
        input: *const c_void,
        packed: *const c_void,
        bias: *const c_void,
        attr: *const c_char,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    fn kb_onednn_free_error(message: *mut c_char);
}

/// What the product applies to its output in the same pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    None,
    /// Exact (erf-based) GELU, as BERT's intermediate layer.
    Gelu,
}

/// The tensor a shim call made, or its error.
fn result(error: *mut c_char, out: *mut c_void) -> Result<Tensor, TchError> {
    if error.is_null() {
        // SAFETY: on success the shim stored a new heap-allocated at::Tensor in `out`,
        // which the returned Tensor now owns (tch frees it on drop).
        return Ok(unsafe { Tensor::from_ptr(out.cast()) });
    }
    // SAFETY: a non-null error is a NUL-terminated string the shim allocated, freed here.
    let message = unsafe { CStr::from_ptr(error) }
        .to_string_lossy()
        .into_owned();
    unsafe { kb_onednn_free_error(error) };
    Err(TchError::Torch(message))
}

/// `weight` (`[out, in]`, on the CPU) in oneDNN's blocked layout for [`linear`].
pub fn pack(weight: &Tensor) -> Result<Tensor, TchError> {
    let mut out = std::ptr::null_mut();
    // SAFETY: `weight` is a live tensor handle for the duration of the call.
    let error = unsafe { kb_onednn_pack_linear_weight(weight.as_ptr().cast(), &mut out) };
    result(error, out)
}

/// [`pack`], then one small product of each [`Activation`] through [`linear`] compared
/// with libtorch's plain one: a libtorch whose operators take other arguments or give
/// other results is found here, at load, and not by every batch after it.
pub fn pack_checked(weight: &Tensor, bias: &Tensor) -> Result<Tensor, String> {
    let packed = pack(weight).map_err(|e| format!("packing refused: {e}"))?;
    check(weight, bias, &packed)?;
    Ok(packed)
}

/// Whether `packed`'s products equal libtorch's plain ones of `weight` on a fixed input
/// (2 rows), within bf16's rounding.
fn check(weight: &Tensor, bias: &Tensor, packed: &Tensor) -> Result<(), String> {
    let _no_grad = tch::no_grad_guard();
    let width = weight.size()[1];
    let input = Tensor::arange(2 * width, (weight.kind(), weight.device()))
        .view([2, width])
        .sin();
    let plain = input
        .f_linear(weight, Some(bias))
        .map_err(|e| e.to_string())?;
    for activation in [Activation::None, Activation::Gelu] {
        let expected = match activation {
            Activation::None => plain.shallow_clone(),
            Activation::Gelu => plain.gelu("none"),
        };
        let got = linear(&input, packed, bias, activation)
            .map_err(|e| format!("{activation:?} product refused: {e}"))?;
        if got.size() != expected.size() {
            return Err(format!(
                "{activation:?} product has shape {:?}, not {:?}",
                got.size(),
                expected.size()
            ));
        }
        let (got, expected) = (got.to_kind(Kind::Float), expected.to_kind(Kind::Float));
        let off = (&got - &expected).abs().max().double_value(&[]);
        let scale = expected.abs().max().double_value(&[]);
        // NaN fails too.
        let close = off <= 0.02 * scale + 0.02;
        if !close {
            return Err(format!(
                "{activation:?} product differs from the plain one by {off} (values up to {scale})"
            ));
        }
    }
    Ok(())
}

/// Whether fp32 linear layers on this CPU run faster with packed weights: measured once
/// per process on one product of the shape of a MiniLM intermediate layer (`[256, 384] x
/// [384, 1536]`, a few runs of each, alternating, fastest of each), unless
/// [`FP32_PACKED_ENV`] decides.
pub fn fp32_packing_pays() -> bool {
    static PAYS: OnceLock<bool> = OnceLock::new();
    *PAYS.get_or_init(|| match std::env::var(FP32_PACKED_ENV).as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => match time_fp32_products() {
            Ok((plain, packed)) => {
                let pays = packing_pays(plain, packed);
                tracing::info!(
                    plain_ms = plain.as_secs_f64() * 1e3,
                    packed_ms = packed.as_secs_f64() * 1e3,
                    packed = pays,
                    "fp32 linear layers on this CPU measured: oneDNN's packed product against \
                     libtorch's plain one"
                );
                pays
            }
            Err(e) => {
                tracing::warn!(error = %e, "fp32 linear layers keep libtorch's plain product");
                false
            }
        },
    })
}

/// The choice of [`fp32_packing_pays`] from the fastest run of each product.
fn packing_pays(plain: Duration, packed: Duration) -> bool {
    packed.as_secs_f64() <= FP32_PACKED_MAX_SHARE * plain.as_secs_f64()
}

/// The fastest of a few runs of one fp32 product, plain then packed.
fn time_fp32_products() -> Result<(Duration, Duration), String> {
    let _no_grad = tch::no_grad_guard();
    let options = (Kind::Float, Device::Cpu);
    let weight = Tensor::randn([1536, 384], options) * 0.05;
    let bias = Tensor::randn([1536], options) * 0.05;
    let input = Tensor::randn([256, 384], options);
    let packed = pack_checked(&weight, &bias)?;
    let plain_run = || input.f_linear(&weight, Some(&bias)).map(drop);
    let packed_run = || linear(&input, &packed, &bias, Activation::None).map(drop);
    let time = |run: &dyn Fn() -> Result<(), TchError>| -> Result<Duration, String> {
        let start = Instant::now();
        run().map_err(|e| e.to_string())?;
        Ok(start.elapsed())
    };
    let (mut plain, mut fast) = (Duration::MAX, Duration::MAX);
    for round in 0..7 {
        let (a, b) = (time(&plain_run)?, time(&packed_run)?);
        // The first round warms both up (oneDNN compiles its kernel there).
        if round > 0 {
            plain = plain.min(a);
            fast = fast.min(b);
        }
    }
    Ok((plain, fast))
}

/// `input @ weight.T + bias` with `packed` from [`pack`], then `activation`.
pub fn linear(
    input: &Tensor,
    packed: &Tensor,
    bias: &Tensor,
    activation: Activation,
) -> Result<Tensor, TchError> {
    let attr = match activation {
        Activation::None => c"none",
        Activation::Gelu => c"gelu",
    };
    let mut out = std::ptr::null_mut();
    // SAFETY: every handle is a live tensor for the duration of the call; `attr` is a
    // NUL-terminated static string.
    let error = unsafe {
        kb_onednn_linear(
            input.as_ptr().cast(),
            packed.as_ptr().cast(),
            bias.as_ptr().cast(),
            attr.as_ptr(),
            &mut out,
        )
    };
    result(error, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn max_difference(a: &Tensor, b: &Tensor) -> f64 {
        (a.to_kind(Kind::Float) - b.to_kind(Kind::Float))
            .abs()
            .max()
            .double_value(&[])
    }

    #[test]
    fn a_packed_linear_gives_the_plain_product_with_or_without_gelu() {
        let _no_grad = tch::no_grad_guard();
        tch::manual_seed(3);
        for kind in [Kind::Float, Kind::BFloat16] {
            let input = Tensor::randn([37, 24], (kind, Device::Cpu));
            let weight = Tensor::randn([40, 24], (kind, Device::Cpu)) * 0.2;
            let bias = Tensor::randn([40], (kind, Device::Cpu)) * 0.1;
            let packed = pack(&weight).unwrap();
            let plain = input.linear(&weight, Some(&bias));
            let fused = linear(&input, &packed, &bias, Activation::None).unwrap();
            assert_eq!(fused.size(), [37, 40]);
            assert_eq!(fused.kind(), kind);
            let tolerance = if kind == Kind::Float { 1e-4 } else { 0.05 };
            assert!(max_difference(&fused, &plain) < tolerance, "{kind:?}");
            let gelu = linear(&input, &packed, &bias, Activation::Gelu).unwrap();
            let expected = plain.gelu("none");
            assert!(
                max_difference(&gelu, &expected) < tolerance,
                "{kind:?} gelu"
            );
            assert!(max_difference(&gelu, &plain) > 0.01, "GELU applied");
        }
    }

    #[test]
    fn a_packed_weight_is_checked_against_the_plain_product_at_load() {
        let _no_grad = tch::no_grad_guard();
        tch::manual_seed(5);
        let weight = Tensor::randn([48, 32], (Kind::BFloat16, Device::Cpu)) * 0.2;
        let bias = Tensor::randn([48], (Kind::BFloat16, Device::Cpu)) * 0.1;
        assert!(pack_checked(&weight, &bias).is_ok());
        // Products that come out wrong (another weight's) or of another shape are refused.
        let wrong = pack(&(&weight * -1.0)).unwrap();
        let error = check(&weight, &bias, &wrong).unwrap_err();
        assert!(error.contains("differs"), "{error}");
        let narrow = pack(&weight.narrow(0, 0, 40)).unwrap();
        let error = check(&weight, &bias, &narrow).unwrap_err();
        assert!(!error.is_empty());
    }

    #[test]
    fn fp32_weights_are_packed_only_where_the_packed_product_is_clearly_faster() {
        let ms = Duration::from_millis;
        // An AMD EPYC: MKL 5.5 ms, oneDNN 2.3 ms.
        assert!(packing_pays(ms(55), ms(23)));
        // An Intel Xeon: the two within noise of each other, or packed slower.
        assert!(!packing_pays(ms(37), ms(36)));
        assert!(!packing_pays(ms(20), ms(30)));
        // The measurement itself runs and times both products.
        let (plain, packed) = time_fp32_products().unwrap();
        assert!(plain > Duration::ZERO && plain < Duration::MAX);
        assert!(packed > Duration::ZERO && packed < Duration::MAX);
    }

    #[test]
    fn a_refused_call_is_an_error_not_a_crash() {
        let weight = Tensor::randn([4, 3], (Kind::Float, Device::Cpu));
        let packed = pack(&weight).unwrap();
        // An input of the wrong width.
        let input = Tensor::randn([2, 5], (Kind::Float, Device::Cpu));
        let bias = Tensor::zeros([4], (Kind::Float, Device::Cpu));
        let error = linear(&input, &packed, &bias, Activation::None).unwrap_err();
        assert!(!error.to_string().is_empty());
    }
}
