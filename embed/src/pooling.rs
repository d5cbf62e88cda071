//! Mean pooling and L2 normalisation, as sentence-transformers' `Pooling` + `Normalize`.

use tch::{Kind, TchError, Tensor};

/// Averages `hidden` `[rows, len, dim]` over the real tokens of `mask` `[rows, len]` and
/// scales each row to unit length. The result is fp32 whatever the encoder's precision, so
/// reduced-precision replicas lose no accuracy in the reduction.
pub fn mean_pool_normalized(hidden: &Tensor, mask: &Tensor) -> Result<Tensor, TchError> {
    let weights = mask.f_to_kind(Kind::Float)?.f_unsqueeze(-1)?;
    let summed = hidden
        .f_to_kind(Kind::Float)?
        .f_mul(&weights)?
        .f_sum_dim_intlist(1, false, Kind::Float)?;
    // Same floors as sentence-transformers (clamp 1e-9) and F.normalize (eps 1e-12).
    let counts = weights
        .f_sum_dim_intlist(1, false, Kind::Float)?
        .f_clamp_min(1e-9)?;
    let mean = summed.f_div(&counts)?;
    let norms = mean.f_norm_scalaropt_dim(2, 1, true)?.f_clamp_min(1e-12)?;
    mean.f_div(&norms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_does_not_change_the_mean_and_rows_are_unit_length() {
        let hidden = Tensor::from_slice(&[1f32, 0., 3., 0., 100., 100., 0., 2., 0., 2., 0., 2.])
            .view([2, 3, 2]);
        let mask = Tensor::from_slice(&[true, true, false, true, true, true]).view([2, 3]);
        let pooled = mean_pool_normalized(&hidden, &mask).unwrap();
        let rows: Vec<Vec<f32>> = Vec::try_from(&pooled).unwrap();
        assert_eq!(rows, vec![vec![1.0, 0.0], vec![0.0, 1.0]]);
    }
}
