//! Exact top-k of each row of a score tile, in two short passes instead of one long one.
//!
//! libtorch's `topk` over a long row is a selection over every score (on a GPU it is most
//! of an exact search's time: `../shared/data/README.md` measured 8.6 ms for 1,024 queries
//! over 1M rows, of which the matrix product is about 1 ms). Here the row is cut into
//! groups of [`GROUP`] scores; a reduction takes each group's maximum, `topk` picks the `k`
//! best groups, and a second `topk` runs over those groups' scores only.
//!
//! A group is strided: of a row's first `G * GROUP` scores, group `g` holds columns
//! `g, g + G, g + 2G, ...`. The reduction then combines `GROUP` contiguous rows of `G`
//! scores element-wise, which vectorises in every precision (a reduction over 32
//! neighbouring scores does not for bf16 on a CPU: 256 x 100k bf16 scores took 27.7 ms
//! that way and 7.9 ms strided; fp32 12.3 vs 9.7 ms; torch 2.11, 2 threads).
//!
//! This is exact: a group holding one of the `k` best scores has a maximum at least the
//! k-th best score `v`. Fewer than `k` groups have a maximum above `v` (each holds a score
//! above `v`), so all of them are picked, and the remaining picks have maximum `v`; the
//! candidates therefore hold every score above `v` and at least enough scores equal to
//! `v`. Ties at `v` may be resolved to different rows than one `topk` would pick, with
//! the same scores.

use std::sync::atomic::{AtomicI64, Ordering};
use tch::{Kind, TchError, Tensor};

/// Scores per group.
pub const GROUP: i64 = 32;

/// Grouping pays only when there are many more groups than picks.
const MIN_GROUPS_PER_PICK: i64 = 8;

/// Scores per group for this process; 0: libtorch's `topk` alone.
static GROUP_SIZE: AtomicI64 = AtomicI64::new(GROUP);

/// Sets the process's selection (`kb-worker bench search --selection`): groups of
/// `Some(n)` scores (at least 2), or `None` for libtorch's `topk` over the whole tile.
pub fn set_group_size(scores: Option<i64>) {
    GROUP_SIZE.store(scores.map_or(0, |n| n.max(2)), Ordering::Relaxed);
}

/// The `k` largest scores of each row of `scores` (`[queries, rows]`), largest first,
/// and their column indices; `k` must not exceed `rows`.
pub(crate) fn topk(scores: &Tensor, k: i64) -> Result<(Tensor, Tensor), TchError> {
    match GROUP_SIZE.load(Ordering::Relaxed) {
        0 => scores.f_topk(k, 1, true, true),
        group => grouped_topk(scores, k, group),
    }
}

/// [`topk`] through the maxima of groups of `group` scores (plain `topk` where the row is
/// too short to gain).
pub(crate) fn grouped_topk(
    scores: &Tensor,
    k: i64,
    group: i64,
) -> Result<(Tensor, Tensor), TchError> {
    let (queries, rows) = scores.size2()?;
    let groups = rows / group;
    if groups < MIN_GROUPS_PER_PICK * k {
        return scores.f_topk(k, 1, true, true);
    }
    let full = groups * group;
    // [queries, group, groups]: column `j * groups + g` is member `j` of group `g`.
    let grouped = scores
        .f_narrow(1, 0, full)?
        .f_reshape([queries, group, groups])?;
    let maxima = grouped.f_amax([1i64].as_slice(), false)?;
    let (_, picked) = maxima.f_topk(k, 1, true, false)?;
    let picked = picked.f_unsqueeze(1)?;
    let mut candidates = grouped
        .f_gather(2, &picked.f_expand([queries, group, k], false)?, false)?
        .f_reshape([queries, group * k])?;
    let members = Tensor::f_arange(group, (Kind::Int64, scores.device()))?
        .f_mul_scalar(groups)?
        .f_view([1, group, 1])?;
    let mut columns = picked.f_add(&members)?.f_reshape([queries, group * k])?;
    if full < rows {
        // The last, partial group is always a candidate.
        let rest = rows - full;
        candidates = Tensor::f_cat(&[candidates, scores.f_narrow(1, full, rest)?], 1)?;
        let tail = Tensor::f_arange_start(full, rows, (Kind::Int64, scores.device()))?
            .f_expand([queries, rest], false)?;
        columns = Tensor::f_cat(&[columns, tail], 1)?;
    }
    let (values, positions) = candidates.f_topk(k, 1, true, true)?;
    Ok((values, columns.f_gather(1, &positions, false)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random scores in [-1, 1), some quantised to force ties and
    /// some rows masked to -inf, as a search tile looks after tombstones.
    fn tile(queries: i64, rows: i64, seed: u64, ties: bool) -> Tensor {
        let mut x = seed;
        let values: Vec<f32> = (0..queries * rows)
            .map(|i| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let v = ((x >> 33) as f32 / (1u64 << 30) as f32) - 1.0;
                if i % 97 == 5 {
                    f32::NEG_INFINITY
                } else if ties {
                    (v * 8.0).round() / 8.0
                } else {
                    v
                }
            })
            .collect();
        Tensor::from_slice(&values).view([queries, rows])
    }

    fn check(scores: &Tensor, k: i64, group: i64) {
        let (want, _) = scores.topk(k, 1, true, true);
        let (got, columns) = grouped_topk(scores, k, group).unwrap();
        assert_eq!(
            Vec::<f32>::try_from(got.flatten(0, -1)).unwrap(),
            Vec::<f32>::try_from(want.flatten(0, -1)).unwrap(),
            "scores differ for {:?}, k={k}",
            scores.size()
        );
        // Each column holds the score reported for it, and no column is reported twice.
        let at = scores.gather(1, &columns, false);
        assert!(at.equal(&got));
        for row in Vec::<Vec<i64>>::try_from(columns).unwrap() {
            let mut sorted = row.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), row.len());
        }
    }

    #[test]
    fn grouped_selection_returns_exactly_the_best_scores() {
        for (queries, rows, k) in [
            (1, 10_000, 10),
            (3, 4_096, 16),    // rows a multiple of the group
            (4, 5_003, 10),    // a partial last group
            (2, 8_192, 32),    // exactly MIN_GROUPS_PER_PICK groups per pick
            (5, 1_000, 10),    // too short: plain topk
            (1, 100_000, 100), // many picks
        ] {
            for seed in [1, 2] {
                for group in [GROUP, 16, 64] {
                    check(&tile(queries, rows, seed, false), k, group);
                    check(&tile(queries, rows, seed, true), k, group);
                }
            }
        }
    }

    #[test]
    fn a_group_holding_several_winners_gives_them_all() {
        // The 10 best scores are all members of one group (every 128th column of 4,096
        // scores in groups of 32), the rest of the row is lower.
        let mut values = vec![0.0f32; 4_096];
        let winners: Vec<i64> = (0..10).map(|j| 5 + j * 128).collect();
        for &c in &winners {
            values[c as usize] = 1.0 + c as f32;
        }
        let scores = Tensor::from_slice(&values).view([1, 4_096]);
        check(&scores, 10, GROUP);
        let (_, columns) = grouped_topk(&scores, 10, GROUP).unwrap();
        let mut columns = Vec::<i64>::try_from(columns.flatten(0, -1)).unwrap();
        columns.sort_unstable();
        assert_eq!(columns, winners);
    }

    #[test]
    fn a_winner_in_the_partial_last_group_is_found() {
        let mut values = vec![0.0f32; 4_100];
        values[4_098] = 5.0;
        values[7] = 4.0;
        let scores = Tensor::from_slice(&values).view([1, 4_100]);
        let (got, columns) = grouped_topk(&scores, 2, GROUP).unwrap();
        assert_eq!(
            Vec::<f32>::try_from(got.flatten(0, -1)).unwrap(),
            [5.0, 4.0]
        );
        assert_eq!(
            Vec::<i64>::try_from(columns.flatten(0, -1)).unwrap(),
            [4_098, 7]
        );
    }

    #[test]
    fn half_precision_scores_select_the_same() {
        for kind in [Kind::Half, Kind::BFloat16] {
            let scores = tile(2, 20_000, 3, false).to_kind(kind);
            check(&scores, 10, GROUP);
        }
    }
}
