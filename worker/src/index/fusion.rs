//! Fusing the dense and the lexical scores of hybrid-search candidates into one ranking.
//!
//! - **Reciprocal rank fusion** (`rrf`): `alpha / (60 + dense rank) + (1 - alpha) / (60 +
//!   lexical rank)`, ranks from 1 among the candidates; a candidate that shares no term
//!   with the query has no lexical rank and gets only the dense part. With `alpha = 0.5`
//!   it is half the classic RRF of Cormack et al., so the order is the same.
//! - **Relative score fusion** (`relative`): each score min-max normalised over the
//!   candidates to 0..1, then `alpha * dense + (1 - alpha) * lexical`.
//!
//! `alpha` weighs the dense side: 1 is dense only, 0 lexical only.

use super::flat::{LexicalHit, Row};
use std::sync::Arc;

/// The RRF constant (the one Cormack et al. and most engines use).
pub const RRF_K: f32 = 60.0;

/// How scores are combined.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Fusion {
    Rrf,
    Relative,
}

/// A hybrid-search result.
#[derive(Debug, Clone, PartialEq)]
pub struct Fused {
    pub row: Arc<Row>,
    pub dense: f32,
    pub lexical: f32,
    pub fused: f32,
}

/// Ranks `candidates` by their fused score, best first (ties: the better dense score),
/// and keeps the first `k`.
pub fn fuse(candidates: Vec<LexicalHit>, fusion: Fusion, alpha: f32, k: usize) -> Vec<Fused> {
    let n = candidates.len();
    let mut fused = vec![0f32; n];
    match fusion {
        Fusion::Rrf => {
            for (rank, i) in ranking(&candidates, |c| c.dense).into_iter().enumerate() {
                fused[i] += alpha / (RRF_K + rank as f32 + 1.0);
            }
            let lexical = ranking(&candidates, |c| c.lexical);
            for (rank, i) in lexical.into_iter().enumerate() {
                if candidates[i].lexical > 0.0 {
                    fused[i] += (1.0 - alpha) / (RRF_K + rank as f32 + 1.0);
                }
            }
        }
        Fusion::Relative => {
            let dense = normalised(&candidates, |c| c.dense);
            let lexical = normalised(&candidates, |c| c.lexical);
            for i in 0..n {
                fused[i] = alpha * dense[i] + (1.0 - alpha) * lexical[i];
            }
        }
    }
    let mut out: Vec<Fused> = candidates
        .into_iter()
        .zip(fused)
        .map(|(c, fused)| Fused {
            row: c.row,
            dense: c.dense,
            lexical: c.lexical,
            fused,
        })
        .collect();
    out.sort_by(|a, b| {
        b.fused
            .total_cmp(&a.fused)
            .then(b.dense.total_cmp(&a.dense))
    });
    out.truncate(k);
    out
}

/// Candidate positions by `score`, best first (stable: ties keep their order).
fn ranking(candidates: &[LexicalHit], score: impl Fn(&LexicalHit) -> f32) -> Vec<usize> {
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by(|&a, &b| score(&candidates[b]).total_cmp(&score(&candidates[a])));
    order
}

/// `score` min-max normalised to 0..1 over the candidates (all 1 when they are equal and
/// positive, all 0 when equal and not).
fn normalised(candidates: &[LexicalHit], score: impl Fn(&LexicalHit) -> f32) -> Vec<f32> {
    let values: Vec<f32> = candidates.iter().map(score).collect();
    let min = values.iter().copied().fold(f32::INFINITY, f32::min);
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    values
        .into_iter()
        .map(|v| match max - min {
            spread if spread > 0.0 => (v - min) / spread,
            _ if v > 0.0 => 1.0,
            _ => 0.0,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(id: &str, dense: f32, lexical: f32) -> LexicalHit {
        LexicalHit {
            row: Arc::new(Row {
                doc_id: id.into(),
                chunk_id: format!("{id}#0"),
                text: String::new(),
                metadata: Default::default(),
            }),
            dense,
            lexical,
        }
    }

    fn ids(fused: &[Fused]) -> Vec<&str> {
        fused.iter().map(|f| f.row.doc_id.as_str()).collect()
    }

    fn sample() -> Vec<LexicalHit> {
        vec![
            hit("dense-best", 0.9, 0.0),
            hit("both", 0.8, 5.0),
            hit("lexical-best", 0.1, 9.0),
            hit("neither", 0.2, 0.0),
        ]
    }

    #[test]
    fn rrf_adds_reciprocal_ranks_weighted_by_alpha() {
        let fused = fuse(sample(), Fusion::Rrf, 0.5, 10);
        assert_eq!(
            ids(&fused),
            ["both", "lexical-best", "dense-best", "neither"]
        );
        let both = &fused[0];
        let want = 0.5 / 62.0 + 0.5 / 62.0;
        assert!((both.fused - want).abs() < 1e-7, "{} vs {want}", both.fused);
        // "neither" matched no term: only its dense rank (3rd) counts.
        assert!((fused[3].fused - 0.5 / 63.0).abs() < 1e-7);
        assert_eq!(ids(&fuse(sample(), Fusion::Rrf, 1.0, 1)), ["dense-best"]);
        assert_eq!(ids(&fuse(sample(), Fusion::Rrf, 0.0, 1)), ["lexical-best"]);
    }

    #[test]
    fn relative_fusion_normalises_each_side_to_unit_range() {
        let fused = fuse(sample(), Fusion::Relative, 0.5, 10);
        let score = |id: &str| fused.iter().find(|f| f.row.doc_id == id).unwrap().fused;
        // dense: (0.8 - 0.1) / 0.8 = 0.875; lexical: 5 / 9.
        assert!((score("both") - (0.5 * 0.875 + 0.5 * 5.0 / 9.0)).abs() < 1e-6);
        assert!((score("dense-best") - 0.5).abs() < 1e-6);
        assert!((score("lexical-best") - 0.5).abs() < 1e-6);
        assert!((score("neither") - 0.5 * 0.125).abs() < 1e-6);
        assert_eq!(ids(&fused)[0], "both");
        assert_eq!(fused.len(), 4);
        assert_eq!(fuse(sample(), Fusion::Relative, 0.5, 2).len(), 2);
    }

    #[test]
    fn ties_go_to_the_better_dense_score() {
        let fused = fuse(
            vec![hit("low", 0.1, 1.0), hit("high", 0.2, 1.0)],
            Fusion::Relative,
            0.0,
            2,
        );
        assert_eq!(ids(&fused), ["high", "low"]);
    }
}
