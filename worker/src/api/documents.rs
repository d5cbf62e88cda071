//! `POST /v1/collections/{c}/documents` (JSON or multipart files) and
//! `DELETE /v1/collections/{c}/documents/{id}`.

use super::error::ApiError;
use super::extract::{ApiPath, ApiQuery};
use super::{check_collection_name, Engine, SharedState, Wait};
use crate::auth::Role;
use crate::log::{ChunkRecord, Metadata, Metric, Op};
use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::Json;
use kb_embed::Lane;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// One document to ingest.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DocumentIn {
    pub id: String,
    pub text: String,
    #[serde(default)]
    pub metadata: Metadata,
    /// A precomputed embedding: the document is stored as one chunk with this vector,
    /// neither chunked nor embedded (it must have the model's dimension).
    #[serde(default)]
    pub vector: Option<Vec<f32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IngestBody {
    documents: Vec<DocumentIn>,
}

/// `?wait=applied` acknowledges once this worker applied the write (read-your-writes);
/// the default `logged` once it is durable in the log. A single node always applies first.
#[derive(Debug, Deserialize, Default)]
pub struct WriteParams {
    #[serde(default)]
    pub wait: Option<String>,
}

/// Reads the body with the configured limit; over it is a JSON 413.
pub async fn read_body(body: Body, limit: usize) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::TooLarge(format!(
            "request body exceeds the limit of {limit} bytes (limits.max_request_bytes)"
        ))
    })
}

pub async fn ingest(
    State(state): State<SharedState>,
    ApiPath(collection): ApiPath<String>,
    ApiQuery(params): ApiQuery<WriteParams>,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    check_collection_name(&collection)?;
    if params
        .wait
        .as_deref()
        .is_some_and(|w| w != "applied" && w != "logged")
    {
        return Err(ApiError::BadRequest(
            "wait must be `applied` or `logged`".into(),
        ));
    }
    let principal = state.principal(req.headers())?;
    if !principal.allows(Role::Write, &collection) {
        return Err(ApiError::forbidden("write to", &collection));
    }
    let engine = state.engine()?;
    let is_multipart = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let docs = if is_multipart {
        read_multipart(req, &state).await?
    } else {
        let bytes = read_body(req.into_body(), state.limits.max_request_bytes).await?;
        let body: IngestBody = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
        body.documents
    };
    validate(&docs, &state)?;
    let wait = if params.wait.as_deref() == Some("applied") {
        Wait::Applied
    } else {
        Wait::Logged
    };
    let result = ingest_documents(&engine, &collection, docs, wait).await?;
    Ok(Json(result))
}

async fn read_multipart(req: Request, state: &SharedState) -> Result<Vec<DocumentIn>, ApiError> {
    let (parts, body) = req.into_parts();
    let limited = read_body(body, state.limits.max_request_bytes).await?;
    let req = Request::from_parts(parts, Body::from(limited));
    let mut multipart = Multipart::from_request(req, state)
        .await
        .map_err(|e| ApiError::BadRequest(format!("invalid multipart body: {e}")))?;
    let mut docs = Vec::new();
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| ApiError::BadRequest(format!("invalid multipart body: {e}")))?
    {
        let Some(file_name) = field.file_name().map(str::to_string) else {
            continue;
        };
        let lower = file_name.to_ascii_lowercase();
        if ![".md", ".markdown", ".txt", ".rst"]
            .iter()
            .any(|ext| lower.ends_with(ext))
        {
            return Err(ApiError::BadRequest(format!(
                "{file_name}: only plain text and markdown files (.md .markdown .txt .rst) are accepted"
            )));
        }
        let bytes = field
            .bytes()
            .await
            .map_err(|e| ApiError::BadRequest(format!("{file_name}: {e}")))?;
        let text = String::from_utf8(bytes.to_vec())
            .map_err(|_| ApiError::BadRequest(format!("{file_name}: not UTF-8 text")))?;
        let mut metadata = Metadata::new();
        metadata.insert("filename".into(), json!(file_name));
        docs.push(DocumentIn {
            id: file_name,
            text,
            metadata,
            vector: None,
        });
    }
    Ok(docs)
}

fn validate(docs: &[DocumentIn], state: &SharedState) -> Result<(), ApiError> {
    let limits = &state.limits;
    if docs.is_empty() {
        return Err(ApiError::BadRequest("no documents in the request".into()));
    }
    if docs.len() > limits.max_documents_per_request {
        return Err(ApiError::TooLarge(format!(
            "{} documents in one request; the limit is {} (limits.max_documents_per_request)",
            docs.len(),
            limits.max_documents_per_request
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for d in docs {
        if d.id.is_empty() || d.id.len() > 512 {
            return Err(ApiError::BadRequest(
                "document id must be 1-512 bytes".into(),
            ));
        }
        if !seen.insert(&d.id) {
            return Err(ApiError::BadRequest(format!(
                "document id {:?} appears twice",
                d.id
            )));
        }
        if d.text.trim().is_empty() {
            // An upsert without chunks would silently delete the stored document.
            return Err(ApiError::BadRequest(format!(
                "document {:?} has no text (empty or whitespace only); to remove a document use DELETE /v1/collections/{{collection}}/documents/{{id}}",
                d.id
            )));
        }
        if d.text.len() > limits.max_document_bytes {
            return Err(ApiError::TooLarge(format!(
                "document {:?} has {} bytes; the limit is {} (limits.max_document_bytes)",
                d.id,
                d.text.len(),
                limits.max_document_bytes
            )));
        }
        if let Some(v) = &d.vector {
            if v.is_empty() || !v.iter().all(|x| x.is_finite()) {
                return Err(ApiError::BadRequest(format!(
                    "document {:?}: vector must be a non-empty list of finite numbers",
                    d.id
                )));
            }
        }
        if let Some((k, _)) = d.metadata.iter().find(|(_, v)| v.is_object()) {
            return Err(ApiError::BadRequest(format!(
                "document {:?}: metadata value of {k:?} must be a string, number, boolean or list",
                d.id
            )));
        }
    }
    Ok(())
}

/// Chunks, embeds and durably writes `docs`; shared by JSON and multipart ingestion.
pub async fn ingest_documents(
    engine: &Arc<Engine>,
    collection: &str,
    docs: Vec<DocumentIn>,
    wait: Wait,
) -> Result<Value, ApiError> {
    let dim = engine.embedder.dim();
    if let Some(d) = docs
        .iter()
        .find(|d| d.vector.as_ref().is_some_and(|v| v.len() != dim))
    {
        return Err(ApiError::BadRequest(format!(
            "document {:?}: vector has {} dimensions, the model has {dim}",
            d.id,
            d.vector.as_ref().map_or(0, Vec::len)
        )));
    }
    let chunking = engine.clone();
    let docs = tokio::task::spawn_blocking(move || {
        docs.into_iter()
            .map(|d| {
                let chunks = match &d.vector {
                    Some(_) => vec![chunking.chunker.whole(&d.id, &d.text)],
                    None => chunking.chunker.chunk(&d.id, &d.text),
                };
                (d, chunks)
            })
            .collect::<Vec<_>>()
    })
    .await?;
    if let Some((d, _)) = docs.iter().find(|(_, chunks)| chunks.is_empty()) {
        return Err(ApiError::BadRequest(format!(
            "document {:?} has no indexable text after chunking",
            d.id
        )));
    }
    // Only chunks without a precomputed vector are embedded.
    let texts: Vec<String> = docs
        .iter()
        .filter(|(d, _)| d.vector.is_none())
        .flat_map(|(_, cs)| cs.iter().map(|c| c.text.clone()))
        .collect();
    let embedded = if texts.is_empty() {
        kb_embed::Embedded {
            vectors: Vec::new(),
            token_counts: Vec::new(),
            truncated: Vec::new(),
        }
    } else {
        engine.embedder.embed(Lane::Bulk, texts).await?
    };
    let truncated = embedded.truncated.iter().filter(|t| **t).count();
    let mut vectors = embedded.vectors.into_iter();
    // Created as cosine on first use; an existing collection keeps its own metric (one
    // created with `PUT {"metric": "dot"}` used to refuse every ingest with 409).
    let metric = engine
        .store
        .view()
        .get(collection)
        .map_or(Metric::Cosine, |c| c.metric);
    let mut ops = vec![Op::CreateCollection {
        collection: collection.to_string(),
        dim,
        metric,
    }];
    let mut total_chunks = 0;
    let documents = docs.len();
    for (mut doc, chunks) in docs {
        total_chunks += chunks.len();
        let given = doc.vector.take();
        let chunks = chunks
            .into_iter()
            .map(|c| ChunkRecord {
                chunk_id: c.chunk_id,
                text: c.text,
                metadata: doc.metadata.clone(),
                vector: match &given {
                    Some(v) => v.clone(),
                    None => vectors.next().unwrap_or_default(),
                },
            })
            .collect();
        ops.push(Op::Upsert {
            collection: collection.to_string(),
            doc_id: doc.id,
            chunks,
        });
    }
    let sequence = engine.write(ops, wait).await?;
    Ok(json!({
        "sequence": sequence,
        "documents": documents,
        "chunks": total_chunks,
        "truncated_chunks": truncated,
    }))
}

pub async fn delete(
    State(state): State<SharedState>,
    ApiPath((collection, id)): ApiPath<(String, String)>,
    headers: axum::http::HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let principal = state.principal(&headers)?;
    if !principal.allows(Role::Write, &collection) {
        return Err(ApiError::forbidden("write to", &collection));
    }
    let engine = state.engine()?;
    let existed = {
        // A document lookup needs the index itself: off the async threads.
        let (store, name, doc) = (Arc::clone(&engine.store), collection.clone(), id.clone());
        tokio::task::spawn_blocking(move || store.index().get(&name).map(|c| c.contains(&doc)))
            .await?
            .ok_or_else(|| {
                ApiError::NotFound(format!("collection {collection:?} does not exist"))
            })?
    };
    let op = Op::Delete {
        collection: collection.clone(),
        doc_id: id,
    };
    let sequence = engine.write(vec![op], Wait::Applied).await?;
    Ok(Json(json!({"sequence": sequence, "deleted": existed})))
}
