//! Re-index jobs: `POST /v1/collections/{c}/reindex` embeds a collection's chunk texts
//! again with this worker's model into a new collection, which takes the old one's name
//! when it has caught up (see [`crate::reindex`]); `GET /v1/jobs`, `GET /v1/jobs/{id}` and
//! `DELETE /v1/jobs/{id}` (cancel).

use super::check_collection_name;
use super::documents::read_body;
use super::error::{ApiError, ErrorBody};
use super::extract::ApiPath;
use super::openapi::CollectionParam;
use super::{Engine, SharedState, Wait};
use crate::auth::Role;
use crate::log::{Binding, ModelIdentity, Op, ReindexJob};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

/// What to re-index into.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReindexBody {
    /// The new collection (absent: the source's name, `-` and the first 8 hex digits of
    /// this worker's model digest). It must not exist.
    #[serde(default)]
    target: Option<String>,
    /// The model expected to embed it: this worker's name or digest. A re-index embeds
    /// with the model of the worker that runs it, so another value is a 409 that says
    /// which model this worker has.
    #[serde(default)]
    model: Option<String>,
}

/// A re-index job and its progress.
#[derive(Debug, Serialize, ToSchema)]
pub struct Job {
    /// The job's id: its target collection.
    id: String,
    /// `running`, `finished` or `cancelled`.
    state: &'static str,
    source: String,
    target: String,
    /// The model embedding the target.
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<ModelIdentity>,
    /// The replica running the job.
    owner: String,
    /// When it started (Unix seconds).
    started: u64,
    /// Documents of the source.
    documents_total: usize,
    /// Documents of the source the target holds as they are.
    documents_done: usize,
    /// Documents this worker's run embedded into the target (absent when another replica
    /// runs the job).
    #[serde(skip_serializing_if = "Option::is_none")]
    embedded_documents: Option<u64>,
    /// Seconds left at this run's pace (absent before its first batch, or elsewhere).
    #[serde(skip_serializing_if = "Option::is_none")]
    eta_seconds: Option<f64>,
    /// The last failure of this run's steps (it retries them), if the last step failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    jobs: Vec<Job>,
}

/// The job named in the path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct JobParam {
    /// The job's id (its target collection).
    id: String,
}

/// Re-index a collection with this worker's model (admin on it and on the target): the
/// chunk texts are embedded again into `target` in the background, on the bulk lane, while
/// the collection keeps serving and taking writes (which the job follows). When the target
/// holds every document, the source is dropped, and its name and aliases point at the
/// target, on every replica at the same record.
#[utoipa::path(post, path = "/v1/collections/{collection}/reindex", operation_id = "reindexCollection", tag = "collections",
    params(CollectionParam),
    request_body = ReindexBody,
    responses(
        (status = 202, description = "started", body = Job),
        (status = 400, description = "invalid body or target name", body = ErrorBody),
        (status = 403, description = "the key is not admin on the collection and the target", body = ErrorBody),
        (status = 404, description = "no such collection", body = ErrorBody),
        (status = 409, description = "the target exists, a job already re-indexes the collection, it holds client vectors or this model's already, or `model` is not this worker's", body = ErrorBody),
    ))]
pub async fn start(
    State(state): State<SharedState>,
    ApiPath(collection): ApiPath<String>,
    req: Request,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    let principal = state.principal(req.headers())?;
    let engine = state.engine()?;
    let bytes = read_body(req.into_body(), 64 * 1024).await?;
    let body: ReindexBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        ReindexBody::default()
    } else {
        serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::BadRequest(format!(
                "invalid body: {e}; expected {{\"target\": \"NAME\", \"model\": \"NAME or DIGEST\"}} (both optional)"
            ))
        })?
    };
    let source = engine.resolve(&collection);
    if let Some(model) = &body.model {
        if *model != engine.model.name && *model != engine.model.digest {
            return Err(ApiError::ModelMismatch(format!(
                "this worker embeds with {}, not {model:?}: a re-index embeds with the model of \
                 the worker that runs it; send the request to a worker of that model",
                engine.model.describe()
            )));
        }
    }
    let job = engine.new_job(&source, body.target);
    let target = job.target.clone();
    check_collection_name(&target)?;
    for name in [&collection, &target] {
        if !principal.allows(Role::Admin, name) {
            return Err(ApiError::Forbidden(format!(
                "this API key is not admin on {name:?}: a re-index needs admin on the \
                 collection and on its target"
            )));
        }
    }
    let binding = engine.store.view().get(&source).map(|c| c.binding.clone());
    match binding {
        None => {
            return Err(ApiError::NotFound(format!(
                "collection {source:?} does not exist"
            )))
        }
        Some(Some(b @ Binding::Model(_))) if !engine.is_foreign(Some(&b)) => {
            return Err(ApiError::Conflict(format!(
                "{source:?} is embedded by this worker's model ({}) already: a re-index \
                 runs on a worker of the new model",
                engine.model.describe()
            )))
        }
        _ => {}
    }
    let sequence = engine
        .write(vec![Op::StartReindex { job: job.clone() }], Wait::Applied)
        .await?;
    tracing::info!(source, target, sequence, model = %engine.model.describe(), "re-index started");
    tokio::spawn(crate::reindex::run(engine.clone(), target));
    Ok((StatusCode::ACCEPTED, Json(describe(&engine, &job).await?)))
}

/// The re-index jobs under way (those whose source or target this key may see).
#[utoipa::path(get, path = "/v1/jobs", operation_id = "listJobs", tag = "collections",
    responses(
        (status = 200, description = "the jobs", body = JobList),
        (status = 401, description = "no valid key", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<SharedState>,
    headers: HeaderMap,
) -> Result<Json<JobList>, ApiError> {
    let principal = state.principal(&headers)?;
    let engine = state.engine()?;
    let mut jobs = Vec::new();
    for job in engine.store.view().jobs.values() {
        if principal.can_see(&job.source) || principal.can_see(&job.target) {
            jobs.push(describe(&engine, job).await?);
        }
    }
    Ok(Json(JobList { jobs }))
}

/// A job's progress: running, or finished or cancelled by this worker's run.
#[utoipa::path(get, path = "/v1/jobs/{id}", operation_id = "getJob", tag = "collections",
    params(JobParam),
    responses(
        (status = 200, description = "the job", body = Job),
        (status = 403, description = "the key may not read the job's collections", body = ErrorBody),
        (status = 404, description = "no such job", body = ErrorBody),
    ))]
pub async fn get(
    State(state): State<SharedState>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Json<Job>, ApiError> {
    let engine = state.engine_for(&headers, Role::Read, &id)?;
    let view = engine.store.view();
    if let Some(job) = view.jobs.get(&id) {
        return Ok(Json(describe(&engine, job).await?));
    }
    // Ended: this worker's run remembers it.
    match engine.reindex.get(&id) {
        Some(run) if run.ended => {
            let finished = view.aliases.values().any(|t| *t == id);
            let target = view.get(&id);
            Ok(Json(Job {
                id: id.clone(),
                state: if finished { "finished" } else { "cancelled" },
                source: view
                    .aliases
                    .iter()
                    .find(|(_, t)| **t == id)
                    .map_or_else(String::new, |(a, _)| a.clone()),
                target: id,
                model: Some(engine.model.clone()),
                owner: engine.replica.clone(),
                started: 0,
                documents_total: target.map_or(0, |c| c.documents),
                documents_done: target.map_or(0, |c| c.documents),
                embedded_documents: Some(run.embedded_documents),
                eta_seconds: None,
                last_error: None,
            }))
        }
        _ => Err(ApiError::NotFound(format!(
            "no re-index job {id:?} (finished or cancelled elsewhere, or never started); see \
             GET /v1/jobs and GET /v1/aliases"
        ))),
    }
}

/// Cancel a re-index (admin on its target): the target is dropped, the source untouched.
#[utoipa::path(delete, path = "/v1/jobs/{id}", operation_id = "cancelJob", tag = "collections",
    params(JobParam),
    responses(
        (status = 200, description = "cancelled", body = Job),
        (status = 403, description = "the key is not admin on the target", body = ErrorBody),
        (status = 404, description = "no such job", body = ErrorBody),
    ))]
pub async fn cancel(
    State(state): State<SharedState>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Json<Job>, ApiError> {
    let engine = state.engine_for(&headers, Role::Admin, &id)?;
    let Some(job) = engine.store.view().jobs.get(&id).cloned() else {
        return Err(ApiError::NotFound(format!(
            "no re-index job {id:?} under way; see GET /v1/jobs"
        )));
    };
    let mut answer = describe(&engine, &job).await?;
    let op = Op::CancelReindex { target: id.clone() };
    let sequence = engine.write(vec![op], Wait::Applied).await?;
    tracing::info!(
        source = job.source,
        target = id,
        sequence,
        "re-index cancelled"
    );
    answer.state = "cancelled";
    Ok(Json(answer))
}

/// Every running job's progress, for the operator (the metrics port's
/// [`kb_config::progress::JOBS_PATH`]; no key, no collection names beyond the job ids the
/// metrics already carry). Empty while the engine loads.
pub async fn progress(state: &SharedState) -> kb_config::progress::JobsProgress {
    let mut answer = kb_config::progress::JobsProgress::default();
    let Ok(engine) = state.engine() else {
        return answer;
    };
    for job in engine.store.view().jobs.values() {
        if let Ok(job) = describe(&engine, job).await {
            answer.jobs.push(kb_config::progress::JobProgress {
                id: job.id,
                documents_total: job.documents_total as u64,
                documents_done: job.documents_done as u64,
                eta_seconds: job.eta_seconds,
            });
        }
    }
    answer
}

/// A running job with its progress (one comparison of source and target, off the async
/// threads).
async fn describe(engine: &Arc<Engine>, job: &ReindexJob) -> Result<Job, ApiError> {
    let (counting, counted) = (engine.clone(), job.clone());
    let (done, total) =
        tokio::task::spawn_blocking(move || crate::reindex::progress(&counting, &counted)).await?;
    let run = engine.reindex.get(&job.target).filter(|_| engine.runs(job));
    let eta_seconds = run.as_ref().and_then(|run| {
        let rate = run.embedded_documents as f64 / run.started.elapsed().as_secs_f64();
        (run.embedded_documents > 0).then(|| total.saturating_sub(done) as f64 / rate)
    });
    Ok(Job {
        id: job.target.clone(),
        state: "running",
        source: job.source.clone(),
        target: job.target.clone(),
        model: match &job.binding {
            Binding::Model(m) => Some(m.clone()),
            Binding::External => None,
        },
        owner: job.owner.clone(),
        started: job.started,
        documents_total: total,
        documents_done: done,
        embedded_documents: run.as_ref().map(|r| r.embedded_documents),
        eta_seconds,
        last_error: run.and_then(|r| r.last_error),
    })
}
