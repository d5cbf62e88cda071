//! Mean pooling and L2 normalisation, as sentence-transformers' `Pooling` + `Normalize`.

use tch::{Kind, TchError, Tensor};

/// Averages the packed token states `hidden` `[tokens, dim]` per row (`row_of_token`,
/// `lengths` `[rows]` real tokens each) and scales each mean to unit length. Only real
/// tokens are in `hidden`, so this is sentence-transformers' masked mean. The result is
/// fp32 whatever the encoder's precision, so reduced-precision replicas lose no accuracy
/// in the reduction.
pub fn mean_pool_normalized(
    hidden: &Tensor,
    row_of_token: &Tensor,
    lengths: &Tensor,
) -> Result<Tensor, TchError> {
    let rows = lengths.size()[0];
    let dim = hidden.size()[1];
    let sums = Tensor::f_zeros([rows, dim], (Kind::Float, hidden.device()))?.f_index_add(
        0,
        row_of_token,
        &hidden.f_to_kind(Kind::Float)?,
    )?;
    // Same floors as sentence-transformers (clamp 1e-9) and F.normalize (eps 1e-12).
    let mean = sums.f_div(&lengths.f_clamp_min(1e-9)?.f_unsqueeze(1)?)?;
    let norms = mean.f_norm_scalaropt_dim(2, 1, true)?.f_clamp_min(1e-12)?;
    mean.f_div(&norms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_row_is_the_unit_mean_of_its_own_tokens() {
        let hidden = Tensor::from_slice(&[1f32, 0., 3., 0., 0., 2., 0., 2., 0., 2.]).view([5, 2]);
        let rows = Tensor::from_slice(&[0i64, 0, 1, 1, 1]);
        let lengths = Tensor::from_slice(&[2f32, 3.]);
        let pooled = mean_pool_normalized(&hidden, &rows, &lengths).unwrap();
        let rows: Vec<Vec<f32>> = Vec::try_from(&pooled).unwrap();
        assert_eq!(rows, vec![vec![1.0, 0.0], vec![0.0, 1.0]]);
    }
}
