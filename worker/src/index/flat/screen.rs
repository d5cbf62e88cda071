//! Exact batched search on a CPU through a bf16 screen (`index.cpu_screen: bf16`).
//!
//! CPUs with AMX run bf16 matrix products several times faster than fp32 ones (this
//! project's 2-vCPU VM, torch 2.11, 384 dimensions: 64 queries x 100k rows 61 ms in fp32,
//! 9.5 ms in bf16), but a bf16 score is only within a bounded error of the fp32 one. A
//! screened shard keeps a bf16 copy of its fp32 vectors; for each tile of rows:
//!
//! 1. the bf16 product scores every row, and its `c` best rows per query are taken
//!    ([`candidates`] of them, through [`super::select`]);
//! 2. those candidates are scored again in fp32 from the fp32 vectors, and the `k` best
//!    of them are the tile's answer;
//! 3. the answer is certified per query: a row outside the candidates has a bf16 score of
//!    at most the `c`-th best bf16 score `b`, hence an fp32 score of at most `b + m`,
//!    where `m` bounds the difference between a bf16 and an fp32 score ([`margin`]). If
//!    `b + m` does not exceed the k-th fp32 score found, no outside row can do better
//!    (at most tie). Queries that fail the certificate are searched in fp32 over the
//!    tile, as without a screen.
//!
//! So the results are those of the fp32 search (ties at the k-th score may resolve to
//! other rows with the same score), at the cost of the bf16 copy: half the fp32 vectors'
//! memory again.

use tch::{Kind, TchError, Tensor};

/// Fewer queries than this search in fp32: a bf16 matrix-vector product has no AMX kernel
/// and is slower than the fp32 one (1 query x 1M rows: 148 vs 83 ms on the same VM).
pub const MIN_QUERIES: usize = 4;

/// Candidates re-scored in fp32 per query and tile for a top-`k`, at most `rows`.
pub fn candidates(k: usize, rows: usize) -> usize {
    (4 * k).max(64).min(rows)
}

/// A bound of `|bf16 score - fp32 score|` for a query of norm `query_norm` against rows of
/// norm at most `max_norm`, in `dim` dimensions.
///
/// Rounding the query and the row to bf16 (unit roundoff u = 2^-8) changes each product
/// `q_i v_i` by at most `(2u + u^2) |q_i v_i|`; the product accumulates in fp32 and is
/// rounded to bf16 once more (`u` of the result); fp32 accumulation, in the bf16 product
/// and in the fp32 one it is compared with, adds at most `dim * 2^-24` each. By
/// Cauchy-Schwarz, `sum |q_i v_i| <= |q| |v|`.
pub fn margin(dim: usize, query_norm: f64, max_norm: f64) -> f64 {
    let u = 2f64.powi(-8);
    let relative = 2.0 * u + u * u + u * (1.0 + 2.0 * u) + 2.0 * dim as f64 * 2f64.powi(-24);
    // 5% on top for the bound's own rounding.
    1.05 * relative * query_norm * max_norm
}

/// One tile of a screened shard: the exact top-`k` per query (fp32 values, tile-local
/// row indices).
pub struct Tile<'a> {
    /// The tile's rows in bf16 and in fp32.
    pub screen: &'a Tensor,
    pub vectors: &'a Tensor,
    /// Rows to leave out (true), one per row of the tile.
    pub excluded: Option<&'a Tensor>,
}

impl Tile<'_> {
    /// The exact top-`k` (`k` at most the tile's rows) of the queries `q32` (fp32) and
    /// `qb` (the same in bf16), each with its screen margin in `margins` (fp32, one per
    /// query).
    pub fn topk(
        &self,
        q32: &Tensor,
        qb: &Tensor,
        margins: &Tensor,
        k: i64,
    ) -> Result<(Tensor, Tensor), TchError> {
        let (queries, rows) = (q32.size()[0], self.vectors.size()[0]);
        let dim = q32.size()[1];
        let c = candidates(k as usize, rows as usize) as i64;
        let screened = self.mask(qb.f_matmul(&self.screen.f_tr()?)?)?;
        let (bf16_best, picked) = super::select::topk(&screened, c)?;
        // The candidates' fp32 scores; rows left out stay out.
        let exact = self
            .vectors
            .f_index_select(0, &picked.f_flatten(0, -1)?)?
            .f_view([queries, c, dim])?
            .f_bmm(&q32.f_unsqueeze(2)?)?
            .f_squeeze_dim(2)?
            .f_masked_fill(&bf16_best.f_isneginf()?, f64::NEG_INFINITY)?;
        let (values, positions) = exact.f_topk(k, 1, true, true)?;
        let indices = picked.f_gather(1, &positions, false)?;
        if c == rows {
            // Every row was a candidate.
            return Ok((values, indices));
        }
        let outside_best = bf16_best
            .f_select(1, c - 1)?
            .f_to_kind(Kind::Float)?
            .f_add(margins)?;
        let failed = outside_best
            .f_gt_tensor(&values.f_select(1, k - 1)?)?
            .f_nonzero()?
            .f_flatten(0, -1)?;
        if failed.size()[0] == 0 {
            return Ok((values, indices));
        }
        let full = self.mask(
            q32.f_index_select(0, &failed)?
                .f_matmul(&self.vectors.f_tr()?)?,
        )?;
        let (v, i) = super::select::topk(&full, k)?;
        Ok((
            values.f_index_copy(0, &failed, &v)?,
            indices.f_index_copy(0, &failed, &i)?,
        ))
    }

    fn mask(&self, scores: Tensor) -> Result<Tensor, TchError> {
        match self.excluded {
            Some(ex) => scores.f_masked_fill(ex, f64::NEG_INFINITY),
            None => Ok(scores),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::filter::Filter;
    use crate::index::flat::{FlatIndex, Row};
    use crate::index::Placement;
    use crate::log::Metric;
    use tch::Device;

    /// Deterministic pseudo-random values in [-1, 1).
    fn noise(seed: u64, n: usize) -> Vec<f32> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn rows(n: usize) -> Vec<Row> {
        (0..n)
            .map(|i| Row {
                doc_id: format!("d{i}"),
                chunk_id: format!("d{i}#0"),
                text: String::new(),
                metadata: Default::default(),
            })
            .collect()
    }

    /// The same rows, with and without the screen, on `shards` CPU shards.
    fn pair(dim: usize, metric: Metric, data: &[f32], shards: usize) -> (FlatIndex, FlatIndex) {
        let n = data.len() / dim;
        let build = |screen: bool| {
            let placement = Placement::from(vec![Device::Cpu; shards]).with_cpu_screen(screen);
            FlatIndex::from_rows_as(dim, metric, placement, Kind::Float, rows(n), data).unwrap()
        };
        let (screened, plain) = (build(true), build(false));
        assert!(screened.shards.iter().all(|s| s.screen.is_some()));
        assert!(plain.shards.iter().all(|s| s.screen.is_none()));
        (screened, plain)
    }

    /// Both indexes answer `queries` alike: scores rank by rank within fp32 accumulation
    /// error (the screen re-scores with a sum of products, the fp32 search with a matrix
    /// product), and the same rows except where two scores are that close.
    fn same_answers(a: &FlatIndex, b: &FlatIndex, queries: &[Vec<f32>], k: usize, tile: usize) {
        let filter = Filter::default();
        let got = a
            .search_in_tiles(queries, k, &filter, tile, &|| false)
            .unwrap();
        let want = b
            .search_in_tiles(queries, k, &filter, tile, &|| false)
            .unwrap();
        for (q, (got, want)) in got.iter().zip(&want).enumerate() {
            assert_eq!(got.len(), want.len());
            for (rank, (g, w)) in got.iter().zip(want).enumerate() {
                let close = (g.score - w.score).abs() < 1e-5;
                assert!(
                    close,
                    "query {q} rank {rank}: {} vs {} (k={k}, tile={tile})",
                    g.score, w.score
                );
                if g.row.doc_id != w.row.doc_id {
                    // Only a near-tie may swap two rows: the row's own fp32 score is then
                    // that close to the one it replaced.
                    let other = want.iter().find(|h| h.row.doc_id == g.row.doc_id);
                    let near = other.is_some_and(|o| (o.score - w.score).abs() < 1e-5)
                        || rank + 1 == want.len();
                    assert!(
                        near,
                        "query {q} rank {rank}: {} instead of {}",
                        g.row.doc_id, w.row.doc_id
                    );
                }
            }
        }
    }

    #[test]
    fn a_screened_search_answers_like_the_fp32_search() {
        let dim = 48;
        let data = noise(1, 6_000 * dim);
        let queries: Vec<Vec<f32>> = noise(2, 8 * dim).chunks(dim).map(<[f32]>::to_vec).collect();
        for metric in [Metric::Cosine, Metric::Dot] {
            for shards in [1, 2] {
                let (mut screened, mut plain) = pair(dim, metric, &data, shards);
                for (k, tile) in [(10, usize::MAX), (5, 1_500), (100, 2_048)] {
                    same_answers(&screened, &plain, &queries, k, tile);
                }
                // Tombstones are masked in the screen as in the fp32 product.
                for i in (0..6_000).step_by(7) {
                    screened.delete(&format!("d{i}"));
                    plain.delete(&format!("d{i}"));
                }
                // (Tiles of 150 rows for a top-100: every row of a tile is a candidate,
                // tombstoned ones included.)
                for (k, tile) in [(10, 1_500), (100, 150)] {
                    same_answers(&screened, &plain, &queries, k, tile);
                }
            }
        }
    }

    #[test]
    fn near_ties_finer_than_bf16_are_ranked_in_fp32() {
        // 300 rows that round to (nearly) the same bf16 vector but differ in fp32, among
        // 3,000 unrelated ones: far more near-ties than candidates, so the certificate
        // fails and only the fp32 fallback can order them.
        let dim = 32;
        let base: Vec<f32> = noise(3, dim).iter().map(|x| x + 2.0).collect();
        let mut data = noise(4, 3_000 * dim);
        for (i, tweak) in noise(5, 300 * dim).chunks(dim).enumerate() {
            let _ = i;
            data.extend(base.iter().zip(tweak).map(|(b, t)| b + t * 1e-5));
        }
        let queries: Vec<Vec<f32>> = noise(6, 6 * dim)
            .chunks(dim)
            .map(|t| base.iter().zip(t).map(|(b, t)| b + t * 0.1).collect())
            .collect();
        let (screened, plain) = pair(dim, Metric::Dot, &data, 1);
        same_answers(&screened, &plain, &queries, 10, usize::MAX);
        let hits = screened.search(&queries, 10, &Filter::default()).unwrap();
        // The winners are among the near-ties (rows 3,000 and on).
        assert!(hits[0]
            .iter()
            .all(|h| h.row.doc_id[1..].parse::<usize>().unwrap() >= 3_000));
    }

    #[test]
    fn the_screen_follows_growth_and_compaction() {
        let dim = 16;
        let data = noise(7, 3_000 * dim);
        let placement = Placement::from(Device::Cpu).with_cpu_screen(true);
        let mut screened =
            FlatIndex::with_kind(dim, Metric::Cosine, placement, Kind::Float).unwrap();
        let mut plain =
            FlatIndex::with_kind(dim, Metric::Cosine, Device::Cpu, Kind::Float).unwrap();
        for (i, v) in data.chunks(dim).enumerate() {
            let chunk = crate::log::ChunkRecord {
                chunk_id: format!("d{i}#0"),
                text: String::new(),
                metadata: Default::default(),
                vector: v.to_vec(),
            };
            screened
                .upsert(&format!("d{i}"), std::slice::from_ref(&chunk))
                .unwrap();
            plain.upsert(&format!("d{i}"), &[chunk]).unwrap();
        }
        assert!(
            screened.shards[0].vectors.0.size()[0] > 1024,
            "the shard grew"
        );
        let queries: Vec<Vec<f32>> = noise(8, 5 * dim).chunks(dim).map(<[f32]>::to_vec).collect();
        same_answers(&screened, &plain, &queries, 10, usize::MAX);
        for i in 0..1_200 {
            screened.delete(&format!("d{i}"));
            plain.delete(&format!("d{i}"));
        }
        assert!(screened.rows.len() < 3_000, "compaction ran");
        assert!(
            screened.shards[0].screen.is_some(),
            "compaction kept the screen"
        );
        same_answers(&screened, &plain, &queries, 10, usize::MAX);
    }

    #[test]
    fn the_margin_bounds_the_bf16_error() {
        for (dim, scale) in [(384, 1.0), (384, 10.0), (1024, 0.1), (8, 3.0)] {
            let rows = Tensor::from_slice(&noise(9, 2_000 * dim))
                .view([2_000, dim as i64])
                .f_mul_scalar(scale)
                .unwrap();
            let queries = Tensor::from_slice(&noise(10, 16 * dim)).view([16, dim as i64]);
            let exact = queries
                .to_kind(Kind::Double)
                .matmul(&rows.to_kind(Kind::Double).tr());
            let bf16 = queries
                .to_kind(Kind::BFloat16)
                .matmul(&rows.to_kind(Kind::BFloat16).tr())
                .to_kind(Kind::Double);
            let max_norm = rows.norm_scalaropt_dim(2.0, [1i64].as_slice(), false).max();
            let bound = queries
                .norm_scalaropt_dim(2.0, [1i64].as_slice(), false)
                .to_kind(Kind::Double)
                .f_mul_scalar(margin(dim, 1.0, max_norm.double_value(&[])))
                .unwrap()
                .unsqueeze(1);
            let worst = (exact - bf16)
                .abs()
                .f_sub(&bound)
                .unwrap()
                .max()
                .double_value(&[]);
            assert!(
                worst <= 0.0,
                "dim {dim}, scale {scale}: error exceeds the margin by {worst}"
            );
        }
    }
}
