//! Pooling and L2 normalisation, as sentence-transformers' `Pooling` and `Normalize`
//! modules compute them, on the packed token states of a batch.

use crate::packing::PackedBatch;
use tch::{Kind, TchError, Tensor};

/// How token states become one vector per text (`1_Pooling/config.json`). Every mode keeps
/// the encoder's width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The first token's state (`[CLS]`): `pooling_mode_cls_token`, or `"cls"`.
    Cls,
    /// The mean of the text's token states: `pooling_mode_mean_tokens`, or `"mean"`.
    Mean,
    /// The element-wise maximum over the text's tokens: `pooling_mode_max_tokens`, or
    /// `"max"`.
    Max,
    /// The sum of the token states divided by the square root of their count:
    /// `pooling_mode_mean_sqrt_len_tokens`, or `"mean_sqrt_len_tokens"`.
    MeanSqrtLen,
}

impl Pooling {
    /// The mode's name in sentence-transformers' current `pooling_mode` spelling.
    pub fn name(self) -> &'static str {
        match self {
            Pooling::Cls => "cls",
            Pooling::Mean => "mean",
            Pooling::Max => "max",
            Pooling::MeanSqrtLen => "mean_sqrt_len_tokens",
        }
    }
}

/// Pools the packed token states `hidden` `[tokens, dim]` of `batch` into `[rows, dim]`.
/// Only real tokens are in `hidden`, so padding never takes part (sentence-transformers
/// masks it out the same way). The result is fp32 whatever the encoder's precision, so
/// reduced-precision replicas lose no accuracy in the reduction.
pub fn pool(hidden: &Tensor, batch: &PackedBatch, mode: Pooling) -> Result<Tensor, TchError> {
    let rows = batch.lengths.size()[0];
    let dim = hidden.size()[1];
    let hidden = hidden.f_to_kind(Kind::Float)?;
    let zeros = || Tensor::f_zeros([rows, dim], (Kind::Float, hidden.device()));
    match mode {
        Pooling::Cls => {
            // Rows are packed in order, so the tokens at position 0 are the rows' first.
            let firsts = batch.positions.f_eq(0i64)?.f_nonzero()?.f_squeeze_dim(1)?;
            hidden.f_index_select(0, &firsts)
        }
        Pooling::Mean | Pooling::MeanSqrtLen => {
            let sums = zeros()?.f_index_add(0, &batch.row_of_token, &hidden)?;
            // Same floor as sentence-transformers (clamp 1e-9).
            let counts = batch.lengths.f_clamp_min(1e-9)?;
            let divisor = if mode == Pooling::Mean {
                counts
            } else {
                counts.f_sqrt()?
            };
            sums.f_div(&divisor.f_unsqueeze(1)?)
        }
        Pooling::Max => {
            // torch's `scatter_reduce`; every row has a token, so the zeros never take part.
            let index = batch
                .row_of_token
                .f_unsqueeze(1)?
                .f_expand([-1, dim], false)?;
            zeros()?.f_internal_scatter_reduce(0, &index, &hidden, "amax", false)
        }
    }
}

/// Scales each row of `pooled` `[rows, dim]` to unit length, with `F.normalize`'s floor
/// (eps 1e-12) on the norm.
pub fn l2_normalize(pooled: &Tensor) -> Result<Tensor, TchError> {
    let norms = pooled
        .f_norm_scalaropt_dim(2, 1, true)?
        .f_clamp_min(1e-12)?;
    pooled.f_div(&norms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// Two rows of 2 and 3 tokens, 2-wide states.
    fn batch() -> (Tensor, PackedBatch) {
        let hidden = Tensor::from_slice(&[1f32, 0., 3., -4., 0., 2., 4., 2., -8., 1.]).view([5, 2]);
        let batch = PackedBatch::new(&[&[101, 7], &[101, 8, 9]], Device::Cpu).unwrap();
        (hidden, batch)
    }

    fn rows(t: &Tensor) -> Vec<Vec<f32>> {
        Vec::try_from(t).unwrap()
    }

    #[test]
    fn each_mode_reduces_each_row_over_its_own_tokens() {
        let (hidden, batch) = batch();
        let pooled = |mode| rows(&pool(&hidden, &batch, mode).unwrap());
        assert_eq!(pooled(Pooling::Cls), [[1., 0.], [0., 2.]]);
        assert_eq!(pooled(Pooling::Mean), [[2., -2.], [-4. / 3., 5. / 3.]]);
        assert_eq!(pooled(Pooling::Max), [[3., 0.], [4., 2.]]);
        let root = |x: f32, n: f32| x / n.sqrt();
        assert_eq!(
            pooled(Pooling::MeanSqrtLen),
            [[root(4., 2.), root(-4., 2.)], [root(-4., 3.), root(5., 3.)]]
        );
    }

    #[test]
    fn max_pooling_ignores_other_rows_even_when_all_values_are_negative() {
        let hidden = Tensor::from_slice(&[-5f32, -1., -2., -3.]).view([4, 1]);
        let batch = PackedBatch::new(&[&[1], &[1, 2, 3]], Device::Cpu).unwrap();
        assert_eq!(
            rows(&pool(&hidden, &batch, Pooling::Max).unwrap()),
            [[-5.], [-1.]]
        );
    }

    #[test]
    fn normalised_rows_have_unit_length_and_zero_stays_zero() {
        let pooled = Tensor::from_slice(&[3f32, 4., 0., 0.]).view([2, 2]);
        assert_eq!(
            rows(&l2_normalize(&pooled).unwrap()),
            [[0.6, 0.8], [0., 0.]]
        );
    }
}
