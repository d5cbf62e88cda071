//! `POST /v1/rerank`: a cross-encoder scores passages against a query, in the request
//! and answer shapes of Hugging Face TEI (`texts`) and of Cohere's rerank API
//! (`documents`); and the `rerank` option of queries ([`rerank_hits`]).

use super::documents::read_body;
use super::error::{ApiError, ErrorBody};
use super::modes::Scored;
use super::{Engine, SharedState};
use axum::extract::{Request, State};
use axum::Json;
use kb_embed::Reranker;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use utoipa::ToSchema;

/// What a worker without `reranker:` answers.
pub const NO_RERANKER: &str = "no reranker configured: set reranker.model in the worker \
     configuration to a sentence-transformers CrossEncoder directory";

/// A rerank request in either shape. Exactly one of `texts` (TEI: the answer is a list
/// of `{index, score, text?}`) or `documents` (Cohere: the answer is `{id, results,
/// meta}`) must be given; the other fields belong to their shape and are ignored in the
/// other. Fields other clients add are ignored.
#[derive(Debug, Deserialize, ToSchema)]
pub struct RerankBody {
    /// The query the passages are scored against (at most limits.max_query_bytes).
    #[schema(min_length = 1, pattern = r"\S")]
    query: String,
    /// TEI: the passages (1 to reranker.max_texts).
    #[serde(default)]
    #[schema(min_items = 1)]
    texts: Option<Vec<String>>,
    /// Cohere: the passages, as strings or `{"text": ...}` (1 to reranker.max_texts).
    #[serde(default)]
    #[schema(min_items = 1)]
    documents: Option<Vec<RerankDocumentIn>>,
    /// TEI: scores are the raw logits instead of the activated scores (default false).
    #[serde(default)]
    raw_scores: bool,
    /// TEI: each result carries its text (default false).
    #[serde(default)]
    return_text: bool,
    /// TEI: `false` refuses pairs longer than the model reads instead of truncating them
    /// (default true).
    #[serde(default)]
    truncate: Option<bool>,
    /// Cohere: only the best `top_n` results (default all).
    #[serde(default)]
    #[schema(minimum = 1)]
    top_n: Option<usize>,
    /// Cohere: accepted and not checked (the worker serves one reranker).
    #[serde(default)]
    #[allow(dead_code)]
    model: Option<String>,
    /// Cohere: each result carries its `document` (default false).
    #[serde(default)]
    return_documents: Option<bool>,
}

/// A Cohere document: a string or an object with `text`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum RerankDocumentIn {
    Text(String),
    Object { text: String },
}

impl RerankDocumentIn {
    fn into_text(self) -> String {
        match self {
            RerankDocumentIn::Text(text) | RerankDocumentIn::Object { text } => text,
        }
    }
}

/// One TEI result.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TeiRank {
    /// The passage's position in `texts`.
    pub index: usize,
    pub score: f32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// A returned Cohere document.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RerankDocumentOut {
    pub text: String,
}

/// One Cohere result.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CohereRank {
    /// The passage's position in `documents`.
    pub index: usize,
    /// The activated score (sigmoid of the logit for most rerankers), 0 to 1.
    pub relevance_score: f32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<RerankDocumentOut>,
}

/// Cohere's answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CohereAnswer {
    /// This answer's id.
    pub id: String,
    /// Best first, at most `top_n`.
    pub results: Vec<CohereRank>,
    /// `{"api_version": {"version": "2"}, "billed_units": {"search_units": 1}}`.
    #[schema(value_type = Object)]
    pub meta: serde_json::Value,
}

/// The answer in the request's shape, best first.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum RerankAnswer {
    /// For `texts`.
    Tei(Vec<TeiRank>),
    /// For `documents`.
    Cohere(CohereAnswer),
}

/// The reranker and `reranker.max_texts`, or the 400 of a worker without one.
pub fn reranker(engine: &Engine) -> Result<(&Reranker, usize), ApiError> {
    engine
        .reranker
        .as_ref()
        .map(|(r, max)| (r, *max))
        .ok_or_else(|| ApiError::BadRequest(NO_RERANKER.into()))
}

/// Rerank passages with the cross-encoder (TEI and Cohere compatible).
#[utoipa::path(post, path = "/v1/rerank", operation_id = "rerank", tag = "rerank",
    request_body = RerankBody,
    responses(
        (status = 200, description = "the passages' scores, best first, in the request's shape", body = RerankAnswer),
        (status = 400, description = "not exactly one of texts and documents, an empty query or passage list, too many passages, or no reranker configured", body = ErrorBody),
        (status = 401, description = "no valid key", body = ErrorBody),
        (status = 429, description = "the reranker's queue is full (see Retry-After)", body = ErrorBody),
        (status = 503, description = "starting", body = ErrorBody),
    ))]
pub async fn rerank(
    State(state): State<SharedState>,
    req: Request,
) -> Result<Json<RerankAnswer>, ApiError> {
    // Any valid key may rerank: it reads no collection.
    state.principal(req.headers())?;
    let engine = state.engine()?;
    let bytes = read_body(req.into_body(), state.limits.max_request_bytes).await?;
    let body: RerankBody = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::BadRequest(format!(
            "invalid rerank request: {e} (`query` is a string; `texts` a list of strings, \
             or `documents` a list of strings or {{\"text\": ...}} objects)"
        ))
    })?;
    let (reranker, max_texts) = reranker(&engine)?;
    let cohere = match (&body.texts, &body.documents) {
        (Some(_), None) => false,
        (None, Some(_)) => true,
        _ => {
            return Err(ApiError::BadRequest(
                "give exactly one of `texts` (TEI shape) or `documents` (Cohere shape)".into(),
            ))
        }
    };
    check_query(&body.query, state.limits.max_query_bytes)?;
    let texts: Vec<String> = match body.documents {
        Some(documents) => documents
            .into_iter()
            .map(RerankDocumentIn::into_text)
            .collect(),
        None => body.texts.unwrap_or_default(),
    };
    let field = if cohere { "documents" } else { "texts" };
    if texts.is_empty() || texts.len() > max_texts {
        return Err(ApiError::BadRequest(format!(
            "`{field}` needs 1 to {max_texts} entries (reranker.max_texts), got {}",
            texts.len()
        )));
    }
    if body.top_n == Some(0) {
        return Err(ApiError::BadRequest("top_n must be at least 1".into()));
    }
    let scored = reranker.score_detailed(&body.query, texts.clone()).await?;
    if body.truncate == Some(false) {
        if let Some(i) = scored.truncated.iter().position(|&t| t) {
            return Err(ApiError::BadRequest(format!(
                "the query and text {i} are longer than the reranker reads ({} tokens); send \
                 `truncate: true` to cut them",
                reranker.max_seq_len()
            )));
        }
    }
    let values = if body.raw_scores && !cohere {
        &scored.logits
    } else {
        &scored.scores
    };
    let order = best_first(values);
    let mut texts: Vec<Option<String>> = texts.into_iter().map(Some).collect();
    if cohere {
        let keep = body.top_n.unwrap_or(order.len());
        let with_documents = body.return_documents.unwrap_or(false);
        let results = order
            .into_iter()
            .take(keep)
            .map(|i| CohereRank {
                index: i,
                relevance_score: values[i],
                document: with_documents
                    .then(|| texts[i].take().map(|text| RerankDocumentOut { text }))
                    .flatten(),
            })
            .collect();
        Ok(Json(RerankAnswer::Cohere(CohereAnswer {
            id: answer_id(),
            results,
            meta: serde_json::json!({
                "api_version": {"version": "2"},
                "billed_units": {"search_units": 1},
            }),
        })))
    } else {
        let results = order
            .into_iter()
            .map(|i| TeiRank {
                index: i,
                score: values[i],
                text: if body.return_text {
                    texts[i].take()
                } else {
                    None
                },
            })
            .collect();
        Ok(Json(RerankAnswer::Tei(results)))
    }
}

fn check_query(query: &str, max_bytes: usize) -> Result<(), ApiError> {
    if query.trim().is_empty() {
        return Err(ApiError::BadRequest("`query` is empty".into()));
    }
    if query.len() > max_bytes {
        return Err(ApiError::BadRequest(format!(
            "query text is {} bytes, more than limits.max_query_bytes ({max_bytes})",
            query.len()
        )));
    }
    Ok(())
}

/// Indexes of `values`, highest value first (ties keep input order).
fn best_first(values: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    order
}

/// A unique id for a Cohere answer: the process start time and a counter.
fn answer_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static START: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    let start = START.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    });
    format!("{start:x}-{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Options of a query's `rerank`: the query's mode finds `candidates` hits, the
/// cross-encoder scores them against the query text, and the best `top_k` by that score
/// are the answer (`score` and `scores.rerank` are the cross-encoder's score).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RerankOptions {
    /// Hits the mode finds for the cross-encoder to score (default 50, at least `top_k`,
    /// at most limits.max_top_k and reranker.max_texts).
    #[serde(default = "default_candidates")]
    #[schema(minimum = 1, default = 50)]
    pub candidates: usize,
}

fn default_candidates() -> usize {
    50
}

impl RerankOptions {
    /// Checks the options against the engine; returns the hits to fetch for `top_k`.
    pub fn fetch_for(
        &self,
        engine: &Engine,
        top_k: usize,
        max_top_k: usize,
    ) -> Result<usize, ApiError> {
        let (_, max_texts) = reranker(engine)?;
        let max = max_top_k.min(max_texts);
        if self.candidates == 0 || self.candidates > max {
            return Err(ApiError::BadRequest(format!(
                "rerank.candidates must be between 1 and {max} (limits.max_top_k, \
                 reranker.max_texts), got {}",
                self.candidates
            )));
        }
        Ok(self.candidates.max(top_k))
    }
}

/// Scores `hits` with the cross-encoder against `query`, best first, the first `top_k`:
/// `score` and `scores.rerank` become the cross-encoder's (activated) score.
pub async fn rerank_hits(
    engine: &Engine,
    query: &str,
    hits: Vec<Scored>,
    top_k: usize,
) -> Result<Vec<Scored>, ApiError> {
    if hits.is_empty() {
        return Ok(hits);
    }
    let (reranker, _) = reranker(engine)?;
    let texts = hits.iter().map(|h| h.row.text.clone()).collect();
    let started = std::time::Instant::now();
    let scores = reranker.score(query, texts).await?;
    tracing::debug!(
        hits = hits.len(),
        took_ms = started.elapsed().as_millis() as u64,
        "reranked"
    );
    let order = best_first(&scores);
    let mut hits: Vec<Option<Scored>> = hits.into_iter().map(Some).collect();
    Ok(order
        .into_iter()
        .take(top_k)
        .filter_map(|i| {
            let mut hit = hits[i].take()?;
            hit.score = scores[i];
            hit.scores.rerank = Some(scores[i]);
            Some(hit)
        })
        .collect())
}

#[cfg(test)]
mod tests;
