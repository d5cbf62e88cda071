//! Query modes: `dense` (the default: the embedding's nearest neighbours), `lexical`
//! (BM25 over the chunk texts) and `hybrid` (both, fused; see [`crate::index::fusion`]).

use super::error::ApiError;
use super::Engine;
use crate::index::filter::Filter;
use crate::index::flat::{Hit, Row};
use crate::index::fusion::{self, Fusion};
use crate::index::IndexError;
use crate::log::Seq;
use crate::stages::{self, Stage};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::ToSchema;

/// Candidates each side of a hybrid search contributes by default (at least `top_k`).
pub const DEFAULT_CANDIDATES: usize = 50;

/// How a query ranks chunks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Nearest neighbours of the query's embedding (or of `vector`).
    #[default]
    Dense,
    /// BM25 over the chunk texts (needs `query` text and `index.lexical`).
    Lexical,
    /// Dense and lexical candidates, fused (needs `query` text and `index.lexical`).
    Hybrid,
}

impl Mode {
    /// The mode as requests spell it.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Dense => "dense",
            Mode::Lexical => "lexical",
            Mode::Hybrid => "hybrid",
        }
    }
}

/// Options of `mode: hybrid`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HybridOptions {
    /// `relative` (min-max normalised scores, weighted; the default) or `rrf`
    /// (reciprocal rank fusion).
    #[serde(default = "default_fusion")]
    #[schema(default = "relative")]
    pub fusion: Fusion,
    /// Weight of the dense side, 0 to 1 (1: dense only, 0: lexical only; default 0.5).
    #[serde(default = "default_alpha")]
    #[schema(minimum = 0.0, maximum = 1.0, default = 0.5)]
    pub alpha: f32,
    /// Candidates each side contributes before fusion (default 50, at least `top_k`, at
    /// most limits.max_top_k).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub candidates: Option<usize>,
}

/// Relative score fusion: on the benchmark corpus it keeps what BM25 finds for identifier
/// queries (recall@10 0.995 against 0.905 for RRF; docs/benchmarks.md).
fn default_fusion() -> Fusion {
    Fusion::Relative
}

fn default_alpha() -> f32 {
    0.5
}

impl Default for HybridOptions {
    fn default() -> Self {
        Self {
            fusion: default_fusion(),
            alpha: default_alpha(),
            candidates: None,
        }
    }
}

impl HybridOptions {
    /// Checks the options; returns the candidates per side for `top_k` hits.
    pub fn candidates_for(&self, top_k: usize, max: usize) -> Result<usize, ApiError> {
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(ApiError::BadRequest(format!(
                "hybrid.alpha must be between 0 and 1, got {}",
                self.alpha
            )));
        }
        match self.candidates {
            Some(n) if n == 0 || n > max => Err(ApiError::BadRequest(format!(
                "hybrid.candidates must be between 1 and {max} (limits.max_top_k), got {n}"
            ))),
            Some(n) => Ok(n.max(top_k)),
            None => Ok(DEFAULT_CANDIDATES.max(top_k).min(max)),
        }
    }
}

/// A hit's scores by side: the ones its mode computed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Scores {
    /// Cosine similarity or dot product of the embeddings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dense: Option<f32>,
    /// BM25 (0 when no query term occurs in the chunk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lexical: Option<f32>,
    /// The fused score of a hybrid query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fused: Option<f32>,
    /// The cross-encoder's score of a query with `rerank` (then also `score`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerank: Option<f32>,
}

/// A ranked chunk: `score` is the one its mode ranks by.
pub struct Scored {
    pub row: Arc<Row>,
    pub score: f32,
    pub scores: Scores,
}

impl Scored {
    pub fn dense(hit: Hit) -> Self {
        Self {
            scores: Scores {
                dense: Some(hit.score),
                ..Scores::default()
            },
            score: hit.score,
            row: hit.row,
        }
    }
}

/// The hits with the index's applied sequence and the collection's version.
pub type Ranked = (Vec<Scored>, Seq, Seq);

/// Runs `search` on the index on a blocking thread (it holds the index's read lock), timed
/// as [`Stage::Lexical`].
async fn on_index<T: Send + 'static>(
    engine: &Engine,
    collection: &str,
    search: impl FnOnce(&crate::index::flat::FlatIndex) -> Result<T, IndexError> + Send + 'static,
) -> Result<(T, Seq, Seq), ApiError> {
    let store = engine.store.clone();
    let collection = collection.to_string();
    let started = std::time::Instant::now();
    let result = tokio::task::spawn_blocking(move || {
        let index = store.index();
        let c = index
            .get(&collection)
            .ok_or_else(|| IndexError::NoSuchCollection(collection.clone()))?;
        let found = search(c)?;
        Ok::<_, IndexError>((found, index.applied(), index.version(&collection)))
    })
    .await
    .map_err(|e| ApiError::Internal(format!("the lexical search failed: {e}")))?;
    stages::observe(Stage::Lexical, started.elapsed());
    Ok(result?)
}

/// The `top_k` best chunks for `text` by BM25 that pass `filter`.
pub async fn lexical(
    engine: &Engine,
    collection: &str,
    text: String,
    top_k: usize,
    filter: Filter,
) -> Result<Ranked, ApiError> {
    let (hits, applied, version) = on_index(engine, collection, move |c| {
        c.lexical_search(&text, top_k, &filter)
    })
    .await?;
    let hits = hits
        .into_iter()
        .map(|h| Scored {
            scores: Scores {
                lexical: Some(h.score),
                ..Scores::default()
            },
            score: h.score,
            row: h.row,
        })
        .collect();
    Ok((hits, applied, version))
}

/// The `top_k` best chunks by fused score: `dense` (a dense search's hits for `vector`,
/// `candidates` of them) and the lexical side's `candidates` best for `text`.
pub async fn hybrid(
    engine: &Engine,
    collection: &str,
    query: (String, Vec<f32>),
    dense: Vec<Hit>,
    filter: Filter,
    options: &HybridOptions,
    (top_k, candidates): (usize, usize),
) -> Result<Ranked, ApiError> {
    let (fusion, alpha) = (options.fusion, options.alpha);
    let (text, vector) = query;
    let (fused, applied, version) = on_index(engine, collection, move |c| {
        let all = c.hybrid_candidates(&text, &vector, dense, candidates, &filter)?;
        Ok(fusion::fuse(all, fusion, alpha, top_k))
    })
    .await?;
    let hits = fused
        .into_iter()
        .map(|f| Scored {
            scores: Scores {
                dense: Some(f.dense),
                lexical: Some(f.lexical),
                fused: Some(f.fused),
                rerank: None,
            },
            score: f.fused,
            row: f.row,
        })
        .collect();
    Ok((hits, applied, version))
}

#[cfg(test)]
mod tests;
