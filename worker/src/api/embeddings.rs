//! OpenAI-compatible `POST /v1/embeddings`, so existing LangChain / LlamaIndex clients
//! work unchanged against a worker.

use super::documents::read_body;
use super::error::ApiError;
use super::SharedState;
use axum::extract::{Request, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Input {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct EmbeddingsBody {
    input: Input,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    encoding_format: Option<String>,
}

/// Most inputs one request may carry.
const MAX_INPUTS: usize = 2048;

pub async fn embeddings(
    State(state): State<SharedState>,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    // Any valid key may embed: it reads no collection.
    state.principal(req.headers())?;
    let engine = state.engine()?;
    let bytes = read_body(req.into_body(), state.limits.max_request_bytes).await?;
    let body: EmbeddingsBody = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::BadRequest(format!(
            "invalid request: {e} (`input` must be a string or a list of strings)"
        ))
    })?;
    if body
        .encoding_format
        .as_deref()
        .is_some_and(|f| f != "float")
    {
        return Err(ApiError::BadRequest(
            "only encoding_format \"float\" is supported".into(),
        ));
    }
    let texts = match body.input {
        Input::One(s) => vec![s],
        Input::Many(v) => v,
    };
    if texts.is_empty() || texts.len() > MAX_INPUTS || texts.iter().any(|t| t.is_empty()) {
        return Err(ApiError::BadRequest(format!(
            "`input` needs 1-{MAX_INPUTS} non-empty strings"
        )));
    }
    let out = engine.embedder.embed(texts).await?;
    let tokens: usize = out.token_counts.iter().sum();
    let data: Vec<Value> = out
        .vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| json!({"object": "embedding", "index": i, "embedding": v}))
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": body.model.unwrap_or_else(|| "all-MiniLM-L6-v2".into()),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })))
}
