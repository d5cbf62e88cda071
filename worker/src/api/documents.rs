//! `POST /v1/collections/{c}/documents` (JSON or multipart files) and
//! `DELETE /v1/collections/{c}/documents/{id}`.

use super::error::{ApiError, ErrorBody};
use super::extract::{ApiPath, ApiQuery};
use super::openapi::{CollectionErrors, CollectionParam, DocumentParams, UploadForm};
use super::{check_collection_name, Engine, SharedState, Wait};
use crate::auth::Role;
use crate::log::{Binding, ChunkRecord, Metadata, Metric, Op};
use crate::stages::{self, Stage};
use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::Json;
use kb_embed::Lane;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;
use tokio::sync::OwnedSemaphorePermit;
use utoipa::{IntoParams, ToSchema};

/// One document to ingest; a document with the same id is replaced.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DocumentIn {
    #[schema(min_length = 1, max_length = 512)]
    pub id: String,
    /// The text, chunked and embedded by the worker.
    #[schema(min_length = 1, pattern = r"\S")]
    pub text: String,
    #[serde(default)]
    #[schema(value_type = Option<super::openapi::Metadata>)]
    pub metadata: Metadata,
    /// A precomputed embedding: the document is stored as one chunk with this vector,
    /// neither chunked nor embedded (it must have the model's dimension).
    #[serde(default)]
    #[schema(min_items = 1)]
    pub vector: Option<Vec<f32>>,
}

/// Documents to upsert in one durable write.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IngestBody {
    #[schema(min_items = 1)]
    documents: Vec<DocumentIn>,
}

#[derive(Debug, Deserialize, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WriteParams {
    /// `applied` acknowledges once this worker applied the write (read-your-writes); the
    /// default `logged` once it is durable in the log.
    #[serde(default)]
    #[param(inline)]
    pub wait: Wait,
}

/// An acknowledged ingest.
#[derive(Debug, Serialize, ToSchema)]
pub struct Ingested {
    /// The write's sequence (give it as `min_sequence` to read your writes elsewhere).
    pub sequence: u64,
    pub documents: usize,
    pub chunks: usize,
    /// Chunks longer than the model reads, embedded from their first tokens.
    pub truncated_chunks: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Deleted {
    pub sequence: u64,
    /// Whether the document existed.
    pub deleted: bool,
}

/// Reads the body with the configured limit; over it is a JSON 413.
pub async fn read_body(body: Body, limit: usize) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::TooLarge(format!(
            "request body exceeds the limit of {limit} bytes (limits.max_request_bytes)"
        ))
    })
}

/// JSON bodies larger than this are large requests: parsed on a blocking thread under a
/// large-request permit ([`super::AppState::large_request_permit`]), so that parsing them
/// never holds up the runtime threads that answer small requests (a batch of 64 vector
/// queries of 384 dimensions is about 250 KB; ordinary queries are a few KB).
pub const LARGE_REQUEST_BYTES: usize = 64 * 1024;

/// Parses `bytes` as JSON, timed as `stage`: at once when small, else as a large request
/// (see [`LARGE_REQUEST_BYTES`]), whose permit is returned for the caller to hold as long
/// as its work should count as in flight.
pub async fn parse_body<T: serde::de::DeserializeOwned + Send + 'static>(
    state: &SharedState,
    bytes: axum::body::Bytes,
    stage: Stage,
) -> Result<(Result<T, serde_json::Error>, Option<OwnedSemaphorePermit>), ApiError> {
    let large = bytes.len() > LARGE_REQUEST_BYTES;
    let parse = move || stages::time(stage, || serde_json::from_slice::<T>(&bytes));
    if !large {
        return Ok((parse(), None));
    }
    let permit = state.large_request_permit().await;
    let parsed = tokio::task::spawn_blocking(parse)
        .await
        .map_err(|e| ApiError::Internal(format!("parsing the request body failed: {e}")))?;
    Ok((parsed, Some(permit)))
}

/// Ingest (upsert) documents: JSON, or multipart text and markdown files. The collection
/// is created (`cosine`) on first use.
#[utoipa::path(post, path = "/v1/collections/{collection}/documents", operation_id = "ingestDocuments", tag = "documents",
    params(CollectionParam, WriteParams),
    request_body(content(
        (IngestBody = "application/json"),
        (UploadForm = "multipart/form-data"),
    )),
    responses(
        (status = 200, description = "durable", body = Ingested),
        (status = 400, description = "invalid body, id, text or vector", body = ErrorBody),
        (status = 403, description = "the key may not write to the collection", body = ErrorBody),
        (status = 413, description = "over limits.max_request_bytes, max_documents_per_request or max_document_bytes", body = ErrorBody),
        (status = 429, description = "the bulk embedding queue is full (see Retry-After)", body = ErrorBody),
        (status = 503, description = "not acknowledged (disk, log or Redis) or starting", body = ErrorBody),
    ))]
pub async fn ingest(
    State(state): State<SharedState>,
    ApiPath(collection): ApiPath<String>,
    ApiQuery(params): ApiQuery<WriteParams>,
    req: Request,
) -> Result<Json<Ingested>, ApiError> {
    check_collection_name(&collection)?;
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
        // The permit is let go after the parse: embedding has lanes of its own.
        let (body, _) = parse_body::<IngestBody>(&state, bytes, Stage::IngestParse).await?;
        body.map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?
            .documents
    };
    validate(&docs, &state)?;
    let result = ingest_documents(&engine, &collection, docs, params.wait).await?;
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
) -> Result<Ingested, ApiError> {
    // Through an alias: its collection.
    let collection = &engine.resolve(collection);
    engine.check_writable(collection)?;
    // A collection of another model takes nothing from this worker, vectors included; one
    // of client vectors takes only documents that bring theirs.
    let (external, unbound, stored_dim, metric) = {
        let view = engine.store.view();
        let c = view.get(collection);
        let binding = c.and_then(|c| c.binding.as_ref());
        let external = binding == Some(&Binding::External);
        if !external || docs.iter().any(|d| d.vector.is_none()) {
            engine.check_embeds(collection, binding)?;
        }
        // Created as cosine on first use; an existing collection keeps its own metric (one
        // created with `PUT {"metric": "dot"}` used to refuse every ingest with 409).
        let metric = c.map_or(Metric::Cosine, |c| c.metric);
        (external, binding.is_none(), c.map(|c| c.dim), metric)
    };
    let (dim, whose) = match stored_dim {
        Some(dim) if external => (dim, "the collection"),
        _ => (engine.embedder.dim(), "the model"),
    };
    if let Some(d) = docs
        .iter()
        .find(|d| d.vector.as_ref().is_some_and(|v| v.len() != dim))
    {
        return Err(ApiError::BadRequest(format!(
            "document {:?}: vector has {} dimensions, {whose} has {dim}",
            d.id,
            d.vector.as_ref().map_or(0, Vec::len)
        )));
    }
    let chunking = engine.clone();
    let docs = tokio::task::spawn_blocking(move || {
        stages::time(Stage::Chunk, || {
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
        let started = std::time::Instant::now();
        // Chunks are documents to the model: they get `embedding.document_prefix`.
        let embedded = (engine.embedder)
            .embed_as(Lane::Bulk, kb_embed::TextKind::Document, texts)
            .await?;
        stages::observe(Stage::EmbedIngest, started.elapsed());
        embedded
    };
    let truncated = embedded.truncated.iter().filter(|t| **t).count();
    let mut vectors = embedded.vectors.into_iter();
    let mut ops = vec![Op::CreateCollection {
        collection: collection.to_string(),
        dim,
        metric,
    }];
    // A new collection, or one written before bindings existed, takes this model.
    if unbound {
        ops.push(Op::BindCollection {
            collection: collection.to_string(),
            binding: engine.binding(),
        });
    }
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
    Ok(Ingested {
        sequence,
        documents,
        chunks: total_chunks,
        truncated_chunks: truncated,
    })
}

/// Delete a document.
#[utoipa::path(delete, path = "/v1/collections/{collection}/documents/{id}", operation_id = "deleteDocument", tag = "documents",
    params(DocumentParams),
    responses(
        (status = 200, description = "deleted (or was not there)", body = Deleted),
        CollectionErrors,
        (status = 503, description = "not acknowledged", body = ErrorBody),
    ))]
pub async fn delete(
    State(state): State<SharedState>,
    ApiPath((collection, id)): ApiPath<(String, String)>,
    headers: axum::http::HeaderMap,
) -> Result<Json<Deleted>, ApiError> {
    let principal = state.principal(&headers)?;
    if !principal.allows(Role::Write, &collection) {
        return Err(ApiError::forbidden("write to", &collection));
    }
    let engine = state.engine()?;
    let collection = engine.resolve(&collection);
    engine.check_writable(&collection)?;
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
    Ok(Json(Deleted {
        sequence,
        deleted: existed,
    }))
}
