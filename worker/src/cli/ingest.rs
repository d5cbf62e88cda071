//! `kb-worker ingest PATH...`: sends text files to a worker in batches, resumably.
//!
//! Every document carries the sha256 of its file in its metadata (`sha256`); the next run
//! lists what the worker holds and skips a file only when the worker has that document
//! with that hash, so a worker that lost documents (a fresh volume, a dropped collection,
//! a restore from an older backup, a delete through the API) gets them again. A state file
//! next to the ingested directory also records the sha256 of every file the worker
//! acknowledged; it decides only for documents the worker holds without a hash (sent by
//! an older version). It is rewritten after every acknowledged batch, so an interrupted
//! run loses at most the batch in flight (which the next run sends again: ingestion is an
//! idempotent upsert).

mod files;
mod held;
mod state;

use super::client::{collection_path, ApiClient, ClientError, ServerArgs};
use anyhow::Context;
use files::{default_state_path, discover, SourceFile};
use held::{is_current, Held};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use state::IngestState;
use std::collections::{BTreeMap, VecDeque};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Arguments of `kb-worker ingest`.
#[derive(Debug, clap::Args)]
pub struct IngestArgs {
    /// Files or directories. Directories are walked for .md, .markdown, .txt and .rst
    /// files, skipping hidden entries; a document's id is its path relative to the
    /// directory (the file name for a file argument).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    #[command(flatten)]
    pub server: ServerArgs,
    /// Collection to ingest into.
    #[arg(long)]
    pub collection: String,
    /// State file for resuming [default: PATH/.kb-ingest-COLLECTION.json per directory,
    /// the file's directory for a file argument].
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Most documents per request.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_docs: u32,
    /// Target size of one request body in bytes (a larger single document goes alone).
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    pub batch_bytes: usize,
    /// Count a batch as done once it is in the log, without waiting until the worker has
    /// applied it (faster; a query right after may not see the last documents yet).
    #[arg(long)]
    pub no_wait: bool,
}

#[derive(Debug, Serialize)]
struct Document {
    id: String,
    text: String,
    metadata: serde_json::Value,
}

/// A document waiting for its batch, with what the state file needs once it is sent.
struct PendingDocument {
    document: Document,
    sha256: String,
    bytes: usize,
}

#[derive(Debug, Deserialize)]
struct IngestResponse {
    chunks: u64,
    #[serde(default)]
    truncated_chunks: u64,
}

#[derive(Debug, Deserialize)]
struct CollectionInfo {
    documents: u64,
    chunks: u64,
}

#[derive(Debug, Default, PartialEq)]
struct Totals {
    sent: u64,
    skipped: u64,
    chunks: u64,
    truncated: u64,
}

/// Runs `kb-worker ingest`.
pub async fn run(args: IngestArgs) -> anyhow::Result<()> {
    ingest(args).await.map(|_| ())
}

async fn ingest(args: IngestArgs) -> anyhow::Result<Totals> {
    let started = Instant::now();
    let groups = plan(&args)?;
    let total: usize = groups.values().map(Vec::len).sum();
    let mut session = Session {
        client: ApiClient::new(&args.server)?,
        url: args.server.url.clone(),
        collection: args.collection.clone(),
        batch_docs: args.batch_docs as usize,
        batch_bytes: args.batch_bytes,
        wait: !args.no_wait,
        progress: progress_bar(total as u64),
        totals: Totals::default(),
    };
    let held = held::held_documents(&session.client, &args.collection).await?;
    for (state_path, files) in &groups {
        session.ingest_group(state_path, files, &held).await?;
    }
    session.progress.finish_and_clear();
    let t = &session.totals;
    println!(
        "ingested {} files into {:?} ({} unchanged skipped, {} chunks, {} truncated) in {:.1} s",
        t.sent,
        args.collection,
        t.skipped,
        t.chunks,
        t.truncated,
        started.elapsed().as_secs_f64()
    );
    let info_path = collection_path(&args.collection, "");
    if let Ok(info) = session.client.get_json::<CollectionInfo>(&info_path).await {
        println!(
            "collection {:?} now holds {} documents, {} chunks",
            args.collection, info.documents, info.chunks
        );
    }
    Ok(session.totals)
}

/// The files of every argument, grouped by the state file that tracks them.
fn plan(args: &IngestArgs) -> anyhow::Result<BTreeMap<PathBuf, Vec<SourceFile>>> {
    let mut groups: BTreeMap<PathBuf, Vec<SourceFile>> = BTreeMap::new();
    for root in &args.paths {
        let files = discover(root)?;
        let state = match &args.state {
            Some(path) => path.clone(),
            None => default_state_path(root, &args.collection),
        };
        groups.entry(state).or_default().extend(files);
    }
    Ok(groups)
}

fn progress_bar(len: u64) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(len), target);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {pos}/{len} files, {elapsed_precise} {msg}")
    {
        bar.set_style(style);
    }
    bar
}

/// One run of the command: the client, batching limits and running totals.
struct Session {
    client: ApiClient,
    url: String,
    collection: String,
    batch_docs: usize,
    batch_bytes: usize,
    wait: bool,
    progress: ProgressBar,
    totals: Totals,
}

impl Session {
    /// Sends the changed files of one state file's group, saving the state per batch.
    async fn ingest_group(
        &mut self,
        state_path: &Path,
        files: &[SourceFile],
        held: &Held,
    ) -> anyhow::Result<()> {
        let mut state = IngestState::load(state_path, &self.url, &self.collection);
        let mut batch: Vec<PendingDocument> = Vec::new();
        let mut batch_bytes = 0;
        for file in files {
            let bytes = std::fs::read(&file.path)
                .with_context(|| format!("cannot read {}", file.path.display()))?;
            let sha256 = hex::encode(Sha256::digest(&bytes));
            if is_current(held, &state, &file.id, &sha256) {
                self.totals.skipped += 1;
                self.progress.inc(1);
                continue;
            }
            let pending = pending_document(file, &bytes, sha256)?;
            let full =
                batch.len() >= self.batch_docs || batch_bytes + pending.bytes > self.batch_bytes;
            if !batch.is_empty() && full {
                self.send(std::mem::take(&mut batch), &mut state, state_path)
                    .await?;
                batch_bytes = 0;
            }
            batch_bytes += pending.bytes;
            batch.push(pending);
        }
        if !batch.is_empty() {
            self.send(batch, &mut state, state_path).await?;
        }
        Ok(())
    }

    /// Sends one batch, halving it while the worker says it is too large (413).
    async fn send(
        &mut self,
        batch: Vec<PendingDocument>,
        state: &mut IngestState,
        state_path: &Path,
    ) -> anyhow::Result<()> {
        let mut queue = VecDeque::from([batch]);
        while let Some(mut batch) = queue.pop_front() {
            match self.post(&batch).await {
                Ok(response) => self.acknowledge(&batch, &response, state, state_path)?,
                Err(e) if e.status() == Some(StatusCode::PAYLOAD_TOO_LARGE) && batch.len() > 1 => {
                    let second = batch.split_off(batch.len() / 2);
                    queue.push_front(second);
                    queue.push_front(batch);
                }
                Err(e) if batch.len() == 1 => {
                    return Err(e).with_context(|| format!("ingesting {}", batch[0].document.id))
                }
                Err(e) => return Err(e).context("ingesting a batch"),
            }
        }
        Ok(())
    }

    async fn post(&self, batch: &[PendingDocument]) -> Result<IngestResponse, ClientError> {
        let documents: Vec<&Document> = batch.iter().map(|p| &p.document).collect();
        let query = if self.wait { "?wait=applied" } else { "" };
        let path = collection_path(&self.collection, &format!("/documents{query}"));
        let body = serde_json::json!({ "documents": documents });
        self.client.post_json(&path, &body).await
    }

    fn acknowledge(
        &mut self,
        batch: &[PendingDocument],
        response: &IngestResponse,
        state: &mut IngestState,
        state_path: &Path,
    ) -> anyhow::Result<()> {
        for pending in batch {
            state.record(pending.document.id.clone(), pending.sha256.clone());
        }
        state.save(state_path)?;
        self.totals.sent += batch.len() as u64;
        self.totals.chunks += response.chunks;
        self.totals.truncated += response.truncated_chunks;
        self.progress.inc(batch.len() as u64);
        Ok(())
    }
}

fn pending_document(
    file: &SourceFile,
    bytes: &[u8],
    sha256: String,
) -> anyhow::Result<PendingDocument> {
    let document = Document {
        id: file.id.clone(),
        // Lossy: a stray Latin-1 byte should not stop a whole directory from ingesting.
        text: String::from_utf8_lossy(bytes).into_owned(),
        metadata: serde_json::json!({
            "path": file.path.to_string_lossy(),
            "ext": file.ext,
            "sha256": sha256,
        }),
    };
    let bytes = serde_json::to_vec(&document)?.len();
    Ok(PendingDocument {
        document,
        sha256,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::{Path as UrlPath, State};
    use axum::response::IntoResponse;
    use axum::Json;
    use std::sync::{Arc, Mutex};

    /// Every request body's document ids, in order.
    type Seen = Arc<Mutex<Vec<Vec<String>>>>;

    /// A stand-in worker that accepts at most `limit` documents per request (413 above).
    async fn fake_worker(limit: usize) -> (String, Seen) {
        async fn documents(
            State((seen, limit)): State<(Seen, usize)>,
            UrlPath(_collection): UrlPath<String>,
            Json(body): Json<serde_json::Value>,
        ) -> axum::response::Response {
            let docs = body["documents"].as_array().cloned().unwrap_or_default();
            if docs.len() > limit {
                let error = serde_json::json!({"error": {"code": "payload_too_large", "message": "too many"}});
                return (StatusCode::PAYLOAD_TOO_LARGE, Json(error)).into_response();
            }
            let ids = docs.iter().map(|d| d["id"].as_str().unwrap().to_string());
            seen.lock().unwrap().push(ids.collect());
            let answer = serde_json::json!({"sequence": 1, "documents": docs.len(), "chunks": 2 * docs.len(), "truncated_chunks": 0});
            Json(answer).into_response()
        }
        let seen = Seen::default();
        let app = axum::Router::new()
            .route(
                "/v1/collections/{c}/documents",
                axum::routing::post(documents)
                    .get(|| async { Json(serde_json::json!({"documents": [], "next": null})) }),
            )
            .with_state((Arc::clone(&seen), limit));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), seen)
    }

    fn args(url: &str, path: &Path) -> IngestArgs {
        IngestArgs {
            paths: vec![path.to_path_buf()],
            server: ServerArgs {
                url: url.to_string(),
                api_key: None,
                retries: 0,
                timeout: 5,
            },
            collection: "docs".into(),
            state: None,
            batch_docs: 64,
            batch_bytes: 4 << 20,
            no_wait: false,
        }
    }

    fn sample_tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("guide/deep")).unwrap();
        for (name, text) in [
            ("intro.md", "# Intro\nhello"),
            ("guide/setup.txt", "setup"),
            ("guide/deep/notes.rst", "notes"),
        ] {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    /// (sent, skipped) of one run.
    async fn sent_skipped(url: &str, dir: &Path) -> (u64, u64) {
        let totals = ingest(args(url, dir)).await.unwrap();
        (totals.sent, totals.skipped)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn second_run_sends_only_changed_files() {
        let dir = sample_tree();
        let (_tmp, _state, url) = crate::test_support::serve(|_| {}).await;
        assert_eq!(sent_skipped(&url, dir.path()).await, (3, 0));
        assert!(dir.path().join(".kb-ingest-docs.json").is_file());
        assert_eq!(
            sent_skipped(&url, dir.path()).await,
            (0, 3),
            "unchanged files are skipped"
        );
        std::fs::write(dir.path().join("intro.md"), "# Intro\nchanged").unwrap();
        assert_eq!(sent_skipped(&url, dir.path()).await, (1, 2));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn documents_the_worker_lost_are_sent_again() {
        let dir = sample_tree();
        let (_tmp, _state, url) = crate::test_support::serve(|_| {}).await;
        assert_eq!(sent_skipped(&url, dir.path()).await, (3, 0));
        let http = reqwest::Client::new();
        let delete = |path: String| {
            let request = http.delete(format!("{url}{path}"));
            async move { assert!(request.send().await.unwrap().status().is_success()) }
        };
        // Deleted through the API: only that document goes again.
        delete(collection_path("docs", "/documents/guide%2Fsetup.txt")).await;
        assert_eq!(sent_skipped(&url, dir.path()).await, (1, 2));
        // The collection dropped (or a fresh volume): everything goes again, although the
        // state file still lists every file as acknowledged.
        delete(collection_path("docs", "")).await;
        assert_eq!(sent_skipped(&url, dir.path()).await, (3, 0));
        let listed: serde_json::Value = http
            .get(format!("{url}/v1/collections/docs/documents"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let sha = &listed["documents"][0]["metadata"]["sha256"];
        assert_eq!(sha.as_str().map(str::len), Some(64), "{listed}");
    }

    #[tokio::test]
    async fn batches_respect_the_document_limit_and_split_on_413() {
        let dir = sample_tree();
        let (url, seen) = fake_worker(1).await;
        let mut two_per_batch = args(&url, dir.path());
        two_per_batch.batch_docs = 2;
        run(two_per_batch).await.unwrap();
        let batches = seen.lock().unwrap().clone();
        assert_eq!(batches.len(), 3, "{batches:?}");
        assert!(batches.iter().all(|b| b.len() == 1));
    }

    #[tokio::test]
    async fn failed_batch_is_not_recorded_as_ingested() {
        let dir = sample_tree();
        let dead = args("http://127.0.0.1:9", dir.path());
        assert!(run(dead).await.is_err());
        assert!(!dir.path().join(".kb-ingest-docs.json").exists());
    }
}
