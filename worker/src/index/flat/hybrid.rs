//! Lexical search of a collection and the candidates of a hybrid search, each with both
//! its dense and its lexical score (fusion itself is [`crate::index::fusion`]).

use super::{FlatIndex, Hit, Row};
use crate::index::filter::Filter;
use crate::index::IndexError;
use crate::log::Metric;
use std::collections::HashMap;
use std::sync::Arc;
use tch::{Kind, Tensor};

/// A candidate of a hybrid search with both scores: the dense one (cosine or dot
/// product, as the collection's metric) and BM25 (0 when no query term occurs in it).
#[derive(Debug, Clone, PartialEq)]
pub struct LexicalHit {
    pub row: Arc<Row>,
    pub dense: f32,
    pub lexical: f32,
}

impl FlatIndex {
    /// The collection's lexical index, if it keeps one.
    pub fn lexical(&self) -> Option<&crate::index::lexical::LexicalIndex> {
        self.lexical.as_ref()
    }

    /// [`FlatIndex::lexical`], mutably (benchmarks tune it).
    pub fn lexical_mut(&mut self) -> Option<&mut crate::index::lexical::LexicalIndex> {
        self.lexical.as_mut()
    }

    fn lexical_or_refuse(&self) -> Result<&crate::index::lexical::LexicalIndex, IndexError> {
        self.lexical.as_ref().ok_or(IndexError::LexicalOff)
    }

    /// The `k` live rows passing `filter` that score best for `text` by BM25, best first;
    /// rows sharing no term with the query are never returned.
    pub fn lexical_search(
        &self,
        text: &str,
        k: usize,
        filter: &Filter,
    ) -> Result<Vec<Hit>, IndexError> {
        let lexical = self.lexical_or_refuse()?;
        let query = lexical.query(text);
        let hits = lexical.search(&query, k, |r| self.passes(r, filter));
        Ok(hits
            .into_iter()
            .filter_map(|(r, score)| {
                let row = self.rows[r].clone()?;
                Some(Hit { row, score })
            })
            .collect())
    }

    fn passes(&self, r: usize, filter: &Filter) -> bool {
        self.rows[r]
            .as_ref()
            .is_some_and(|row| filter.is_empty() || filter.matches(&row.metadata))
    }

    /// The candidates of a hybrid search: the rows of `dense` (a dense search's hits for
    /// `vector`) and the `candidates` best rows by BM25 for `text` that pass `filter`,
    /// each once, with both scores. The dense hits may come from an earlier state of the
    /// collection: their BM25 score is computed from their own text.
    pub fn hybrid_candidates(
        &self,
        text: &str,
        vector: &[f32],
        dense: Vec<Hit>,
        candidates: usize,
        filter: &Filter,
    ) -> Result<Vec<LexicalHit>, IndexError> {
        let lexical = self.lexical_or_refuse()?;
        if vector.len() != self.dim {
            return Err(IndexError::Dimension {
                expected: self.dim,
                got: vector.len(),
            });
        }
        let query = lexical.query(text);
        let mut seen: HashMap<(String, String), ()> = HashMap::new();
        let mut out: Vec<LexicalHit> = Vec::with_capacity(dense.len() + candidates);
        for hit in dense {
            let key = (hit.row.doc_id.clone(), hit.row.chunk_id.clone());
            if seen.insert(key, ()).is_none() {
                out.push(LexicalHit {
                    lexical: lexical.score_text(&query, &hit.row.text),
                    dense: hit.score,
                    row: hit.row,
                });
            }
        }
        let mut missing: Vec<(usize, f32)> = Vec::new();
        for (r, score) in lexical.search(&query, candidates, |r| self.passes(r, filter)) {
            let Some(row) = &self.rows[r] else { continue };
            let key = (row.doc_id.clone(), row.chunk_id.clone());
            if seen.insert(key, ()).is_none() {
                missing.push((r, score));
            }
        }
        let rows: Vec<usize> = missing.iter().map(|&(r, _)| r).collect();
        let dense_scores = self.dense_scores(vector, &rows)?;
        for ((r, lexical), dense) in missing.into_iter().zip(dense_scores) {
            if let Some(row) = self.rows[r].clone() {
                out.push(LexicalHit {
                    row,
                    dense,
                    lexical,
                });
            }
        }
        Ok(out)
    }

    /// The dense scores of `vector` against rows `rows` (as a search would compute them:
    /// the query normalised for cosine collections, the product in fp32).
    pub fn dense_scores(&self, vector: &[f32], rows: &[usize]) -> Result<Vec<f32>, IndexError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let mut q = Tensor::f_from_slice(vector)?.f_view([1, self.dim as i64])?;
        if self.metric == Metric::Cosine {
            q = super::normalize(&q)?;
        }
        let n = self.shards.len();
        let mut scores = vec![0f32; rows.len()];
        for (s, shard) in self.shards.iter().enumerate() {
            let picked: Vec<(usize, i64)> = rows
                .iter()
                .enumerate()
                .filter(|(_, &r)| r % n == s)
                .map(|(i, &r)| (i, (r / n) as i64))
                .collect();
            if picked.is_empty() {
                continue;
            }
            let positions: Vec<i64> = picked.iter().map(|&(_, p)| p).collect();
            let index = Tensor::f_from_slice(&positions)?.f_to_device(shard.device)?;
            let vectors = shard
                .vectors
                .0
                .f_index_select(0, &index)?
                .f_to_device(tch::Device::Cpu)?
                .f_to_kind(Kind::Float)?;
            let products = vectors.f_matmul(&q.f_transpose(0, 1)?)?.f_view([-1])?;
            let values: Vec<f32> = Vec::<f32>::try_from(&products)?;
            for ((i, _), v) in picked.into_iter().zip(values) {
                scores[i] = v;
            }
        }
        Ok(scores)
    }
}

#[cfg(test)]
mod tests {
    use crate::index::filter::Filter;
    use crate::index::flat::FlatIndex;
    use crate::index::lexical::Analyzer;
    use crate::index::{IndexError, Placement};
    use crate::log::{ChunkRecord, Metric};
    use serde_json::json;
    use tch::Device;

    fn collection(placement: Placement) -> FlatIndex {
        let mut c = FlatIndex::new(2, Metric::Cosine, placement).unwrap();
        let docs = [
            ("a", "alpha beta", [1.0, 0.0], "x"),
            ("b", "beta gamma", [0.0, 1.0], "y"),
            ("c", "gamma delta", [1.0, 1.0], "x"),
            ("d", "unrelated words", [-1.0, 0.0], "y"),
        ];
        for (id, text, v, tag) in docs {
            let chunk = ChunkRecord {
                chunk_id: format!("{id}#0"),
                text: text.into(),
                metadata: json!({ "tag": tag }).as_object().unwrap().clone(),
                vector: v.to_vec(),
            };
            c.upsert(id, &[chunk]).unwrap();
        }
        c
    }

    fn lexical() -> Placement {
        Placement::from(Device::Cpu).with_lexical(Some(Analyzer::Standard))
    }

    #[test]
    fn lexical_search_honours_filters_deletes_and_compaction() {
        let mut c = collection(lexical());
        let ids = |hits: Vec<crate::index::flat::Hit>| {
            hits.into_iter()
                .map(|h| h.row.doc_id.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            ids(c.lexical_search("gamma", 10, &Filter::default()).unwrap()).len(),
            2
        );
        let x = Filter::parse(&json!({"tag": "x"})).unwrap();
        assert_eq!(ids(c.lexical_search("gamma", 10, &x).unwrap()), ["c"]);
        c.delete("c");
        assert_eq!(
            ids(c.lexical_search("gamma", 10, &Filter::default()).unwrap()),
            ["b"]
        );
        c.compact();
        assert_eq!(
            ids(c.lexical_search("gamma", 10, &Filter::default()).unwrap()),
            ["b"]
        );
        assert_eq!(
            ids(c.lexical_search("delta", 10, &Filter::default()).unwrap()),
            Vec::<String>::new()
        );
    }

    #[test]
    fn hybrid_candidates_carry_both_exact_scores() {
        let c = collection(lexical());
        let vector = [1.0, 0.0];
        let dense = c
            .search(&[vector.to_vec()], 1, &Filter::default())
            .unwrap()
            .remove(0);
        assert_eq!(dense[0].row.doc_id, "a");
        let all = c
            .hybrid_candidates("gamma", &vector, dense, 10, &Filter::default())
            .unwrap();
        let by_id = |id: &str| all.iter().find(|h| h.row.doc_id == id).unwrap().clone();
        assert_eq!(
            all.len(),
            3,
            "a from the dense side, b and c from the lexical side"
        );
        assert_eq!(by_id("a").lexical, 0.0);
        assert!((by_id("a").dense - 1.0).abs() < 1e-6);
        // c = (1, 1) normalised: cosine with (1, 0) is 1/sqrt(2).
        assert!((by_id("c").dense - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
        assert!(by_id("b").dense.abs() < 1e-6);
        let lexical = c.lexical_search("gamma", 10, &Filter::default()).unwrap();
        for hit in lexical {
            assert_eq!(by_id(&hit.row.doc_id).lexical, hit.score);
        }
    }

    #[test]
    fn dense_scores_match_a_search_on_sharded_collections() {
        let placement = Placement::from(vec![Device::Cpu, Device::Cpu, Device::Cpu])
            .with_lexical(Some(Analyzer::Standard));
        let c = collection(placement);
        let q = vec![0.3, -0.7];
        let hits = c
            .search(std::slice::from_ref(&q), 4, &Filter::default())
            .unwrap()
            .remove(0);
        let rows: Vec<usize> = (0..4).collect();
        let scores = c.dense_scores(&q, &rows).unwrap();
        for hit in hits {
            let row = ["a", "b", "c", "d"]
                .iter()
                .position(|id| *id == hit.row.doc_id)
                .unwrap();
            assert!((scores[row] - hit.score).abs() < 1e-5);
        }
    }

    #[test]
    fn collections_without_a_lexical_index_refuse_lexical_search() {
        let c = collection(Placement::from(Device::Cpu));
        let err = c
            .lexical_search("gamma", 10, &Filter::default())
            .unwrap_err();
        assert!(matches!(err, IndexError::LexicalOff));
    }
}
