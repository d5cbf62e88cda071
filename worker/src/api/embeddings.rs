//! OpenAI-compatible `POST /v1/embeddings` and `GET /v1/models`, so existing clients
//! (openai-python, LangChain's `OpenAIEmbeddings`, LlamaIndex) work unchanged against a
//! worker: text or token-id inputs, `float` or `base64` encoding, `dimensions`.

use super::documents::read_body;
use super::error::{ApiError, ErrorBody};
use super::SharedState;
use axum::extract::{Request, State};
use axum::Json;
use base64::Engine as _;
use kb_embed::{Embedded, Lane};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `input` in every shape the OpenAI API accepts: a text, texts, token ids or lists of
/// token ids (at most 2048 entries).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Input {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

/// How vectors are encoded in the answer (describes `encoding_format`, which is read as
/// a string so that an unknown format gets its own message).
#[derive(ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum EncodingFormat {
    /// A list of numbers (the default).
    Float,
    /// Base64 of the little-endian f32 bytes.
    Base64,
}

/// An OpenAI embeddings request. Fields OpenAI clients may add (`user`, ...) are ignored,
/// as the OpenAI API does for fields it does not use.
#[derive(Debug, Deserialize, ToSchema)]
pub struct EmbeddingsBody {
    input: Input,
    /// Accepted and not checked: the worker serves one model (see `GET /v1/models`).
    #[serde(default)]
    #[allow(dead_code)]
    model: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<EncodingFormat>)]
    encoding_format: Option<String>,
    /// Must equal the model's dimension (384 for all-MiniLM-L6-v2); any other is a 400.
    #[serde(default)]
    #[schema(minimum = 1)]
    dimensions: Option<usize>,
}

/// One input's vector.
#[derive(Debug, Serialize, ToSchema)]
pub struct EmbeddingOut {
    /// Always `embedding`.
    object: &'static str,
    index: usize,
    embedding: Vector,
}

/// A vector as numbers or as base64.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Vector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Usage {
    prompt_tokens: usize,
    total_tokens: usize,
}

/// The vectors in input order.
#[derive(Debug, Serialize, ToSchema)]
pub struct EmbeddingList {
    /// Always `list`.
    object: &'static str,
    data: Vec<EmbeddingOut>,
    /// The served model's name.
    model: String,
    usage: Usage,
}

/// A served model.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelOut {
    id: String,
    /// Always `model`.
    object: &'static str,
    created: u64,
    owned_by: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    /// Always `list`.
    object: &'static str,
    data: Vec<ModelOut>,
}

/// Most inputs one request may carry (the OpenAI API's limit).
const MAX_INPUTS: usize = 2048;

/// Requests with at most this many inputs are latency-bound (a query being embedded by
/// a RAG framework) and go through the interactive lane; larger ones are bulk work.
pub const INTERACTIVE_MAX_INPUTS: usize = 16;

/// OpenAI-compatible embeddings.
#[utoipa::path(post, path = "/v1/embeddings", operation_id = "createEmbeddings", tag = "openai",
    request_body = EmbeddingsBody,
    responses(
        (status = 200, description = "the embeddings, in input order", body = EmbeddingList),
        (status = 400, description = "invalid input, encoding_format or dimensions", body = ErrorBody),
        (status = 401, description = "no valid key", body = ErrorBody),
        (status = 429, description = "the embedding queue is full (see Retry-After)", body = ErrorBody),
        (status = 503, description = "starting", body = ErrorBody),
    ))]
pub async fn embeddings(
    State(state): State<SharedState>,
    req: Request,
) -> Result<Json<EmbeddingList>, ApiError> {
    // Any valid key may embed: it reads no collection.
    state.principal(req.headers())?;
    let engine = state.engine()?;
    let bytes = read_body(req.into_body(), state.limits.max_request_bytes).await?;
    let body: EmbeddingsBody = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::BadRequest(format!(
            "invalid request: {e} (`input` must be a string, a list of strings, a list of \
             token ids or a list of token-id lists)"
        ))
    })?;
    let base64 = match body.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "encoding_format {other:?} is not supported: use \"float\" or \"base64\""
            )))
        }
    };
    let embedder = &engine.embedder;
    if let Some(dimensions) = body.dimensions {
        if dimensions != embedder.dim() {
            return Err(ApiError::BadRequest(format!(
                "dimensions {dimensions}: {} produces {}-dimensional embeddings and was not \
                 trained to be shortened; omit `dimensions` or set it to {}",
                embedder.model_name(),
                embedder.dim(),
                embedder.dim()
            )));
        }
    }
    let out = match body.input {
        Input::Text(text) => embed_texts(&engine, vec![text]).await?,
        Input::Texts(texts) => embed_texts(&engine, texts).await?,
        Input::Tokens(ids) => embed_ids(&engine, vec![ids]).await?,
        Input::TokenLists(lists) => embed_ids(&engine, lists).await?,
    };
    let tokens: usize = out.token_counts.iter().sum();
    let data = out
        .vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| EmbeddingOut {
            object: "embedding",
            index,
            embedding: if base64 {
                Vector::Base64(encode_base64(&v))
            } else {
                Vector::Float(v)
            },
        })
        .collect();
    Ok(Json(EmbeddingList {
        object: "list",
        data,
        model: embedder.model_name().to_string(),
        usage: Usage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    }))
}

/// OpenAI-compatible list of the one model this worker serves.
#[utoipa::path(get, path = "/v1/models", operation_id = "listModels", tag = "openai",
    responses(
        (status = 200, description = "the served model", body = ModelList),
        (status = 401, description = "no valid key", body = ErrorBody),
    ))]
pub async fn models(
    State(state): State<SharedState>,
    req: Request,
) -> Result<Json<ModelList>, ApiError> {
    state.principal(req.headers())?;
    let engine = state.engine()?;
    Ok(Json(ModelList {
        object: "list",
        data: vec![ModelOut {
            id: engine.embedder.model_name().to_string(),
            object: "model",
            created: 0,
            owned_by: "knowledgebase-operator",
        }],
    }))
}

fn check_count(n: usize) -> Result<Lane, ApiError> {
    if n == 0 || n > MAX_INPUTS {
        return Err(ApiError::BadRequest(format!(
            "`input` needs 1 to {MAX_INPUTS} entries, got {n}"
        )));
    }
    Ok(if n <= INTERACTIVE_MAX_INPUTS {
        Lane::Interactive
    } else {
        Lane::Bulk
    })
}

async fn embed_texts(engine: &super::Engine, texts: Vec<String>) -> Result<Embedded, ApiError> {
    let lane = check_count(texts.len())?;
    if let Some(i) = texts.iter().position(String::is_empty) {
        return Err(ApiError::BadRequest(format!(
            "input {i} is an empty string"
        )));
    }
    Ok(engine.embedder.embed(lane, texts).await?)
}

async fn embed_ids(engine: &super::Engine, lists: Vec<Vec<u32>>) -> Result<Embedded, ApiError> {
    let lane = check_count(lists.len())?;
    Ok(engine.embedder.embed_token_ids(lane, lists).await?)
}

/// The vector as the OpenAI API encodes it: little-endian f32 bytes, base64.
fn encode_base64(vector: &[f32]) -> String {
    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_openai_input_shape_parses() {
        let parse = |s: &str| serde_json::from_str::<EmbeddingsBody>(s).unwrap().input;
        assert!(matches!(parse(r#"{"input": "a"}"#), Input::Text(_)));
        assert!(matches!(parse(r#"{"input": ["a", "b"]}"#), Input::Texts(v) if v.len() == 2));
        assert!(matches!(parse(r#"{"input": [1, 2, 3]}"#), Input::Tokens(v) if v.len() == 3));
        assert!(matches!(
            parse(r#"{"input": [[1, 2], [3]], "model": "x", "user": "u"}"#),
            Input::TokenLists(v) if v.len() == 2
        ));
    }

    #[test]
    fn base64_is_little_endian_f32() {
        let s = encode_base64(&[1.0, -0.5]);
        let bytes = base64::engine::general_purpose::STANDARD.decode(s).unwrap();
        assert_eq!(
            bytes,
            [1.0f32.to_le_bytes(), (-0.5f32).to_le_bytes()].concat()
        );
    }
}
