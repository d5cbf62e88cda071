//! `kb-worker serve`: the HTTP API. Without Redis: the embedded default (file WAL, one
//! node). With Redis: a replica that writes to and tails the knowledge base's stream.

use crate::api::{self, AppState, Engine, SharedState};
use crate::auth::Auth;
use crate::cache::{model_fingerprint, QueryCache};
use crate::chunk::Chunker;
use crate::index::lexical::Analyzer;
use crate::index::Placement;
use crate::log::redis::RedisLog;
use crate::metrics::Metrics;
use crate::replica::{self, Replicator};
use crate::search::SearchBatcher;
use crate::store::Store;
use anyhow::{bail, Context};
use kb_config::{CpuScreen, IndexConfig, Lexical, OnModelMismatch, WorkerConfig};
use kb_embed::Embedder;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tch::Device;

/// Flags of `serve`; each overrides the config file.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// YAML worker config (the operator's ConfigMap); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// HTTP API address.
    #[arg(long)]
    pub listen: Option<String>,
    /// Prometheus metrics address.
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Directory for the WAL and snapshots.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// sentence-transformers model directory.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// cpu, cuda, cuda:0,1 or auto.
    #[arg(long)]
    pub device: Option<String>,
    /// Redis URL for replicated mode (absent: file WAL, single node).
    #[arg(long)]
    pub redis_url: Option<String>,
    /// YAML list of API keys.
    #[arg(long)]
    pub api_keys: Option<PathBuf>,
    /// No authentication; refused unless listening on loopback.
    #[arg(long)]
    pub open: bool,
}

/// Config file, then `KB_*` environment, then flags.
pub fn resolve_config(args: &ServeArgs) -> anyhow::Result<WorkerConfig> {
    let mut cfg = match &args.config {
        Some(path) => WorkerConfig::from_file(path)?,
        None => WorkerConfig::default(),
    };
    cfg.apply_env(std::env::vars())?;
    let set = |dst: &mut String, src: &Option<String>| {
        if let Some(v) = src {
            dst.clone_from(v);
        }
    };
    set(&mut cfg.listen, &args.listen);
    set(&mut cfg.metrics_listen, &args.metrics_listen);
    set(&mut cfg.embedding.device, &args.device);
    if let Some(d) = &args.data_dir {
        cfg.data_dir.clone_from(d);
    }
    if args.model.is_some() {
        cfg.model.clone_from(&args.model);
    }
    if let Some(url) = &args.redis_url {
        cfg.redis.get_or_insert_with(Default::default).url = Some(url.clone());
    }
    if args.api_keys.is_some() {
        cfg.auth.api_keys_file.clone_from(&args.api_keys);
    }
    cfg.auth.open |= args.open;
    cfg.validate()?;
    Ok(cfg)
}

fn auth_for(cfg: &WorkerConfig, listen: &SocketAddr) -> anyhow::Result<Auth> {
    match (&cfg.auth.api_keys_file, cfg.auth.open) {
        (Some(_), true) => bail!("choose one of --api-keys and --open"),
        (Some(path), false) => Ok(Auth::from_file(path)?),
        (None, true) if listen.ip().is_loopback() => Ok(Auth::open()),
        (None, true) => bail!("--open (no authentication) is refused on {listen}: listen on 127.0.0.1 or pass --api-keys FILE"),
        (None, false) => bail!("no API keys: pass --api-keys FILE (YAML list of {{key, role, collections}}) or --open for local use on loopback"),
    }
}

/// The index lives where the embedder runs: sharded over the same GPUs (`cuda`,
/// `cuda:0,1`, or `auto` with GPUs present), else on the CPU, where `index.cpu_screen`
/// applies.
fn index_placement(embedder_devices: &[String], index: &IndexConfig) -> Placement {
    let devices: Vec<Device> = embedder_devices
        .iter()
        .filter_map(|name| name.strip_prefix("cuda:")?.parse().ok().map(Device::Cuda))
        .collect();
    let on_cpu = devices.is_empty();
    let screen = index.cpu_screen == CpuScreen::Bf16;
    if screen && !on_cpu {
        tracing::info!(
            ?devices,
            "index.cpu_screen applies to CPU shards; this index lives on GPUs (fp16)"
        );
    } else if screen && !kb_embed::cpu_has_native_bf16() {
        tracing::warn!("index.cpu_screen: bf16 on a CPU without AVX512-BF16 or AMX-BF16: bf16 products are emulated there and batched searches get slower, not faster; set it to none");
    }
    let lexical = match index.lexical {
        Lexical::Off => None,
        Lexical::Standard => Some(Analyzer::Standard),
        Lexical::English => Some(Analyzer::English),
    };
    Placement::from(devices)
        .with_cpu_screen(screen && on_cpu)
        .with_lexical(lexical)
}

/// libtorch threads of one search run: every core the worker may use
/// (`embedding.cpu_cores`, else what the process may run on).
fn search_threads(cfg: &WorkerConfig) -> usize {
    cfg.embedding
        .cpu_cores
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
}

pub(crate) fn load_engine(
    cfg: &WorkerConfig,
    log: Option<RedisLog>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Engine> {
    let model = cfg
        .model
        .as_ref()
        .context("no model: pass --model DIR (a sentence-transformers directory) or set `model` in the config")?;
    // `precision: auto` on a CPU is measured once per CPU, libtorch and model; the
    // result is cached in the data directory.
    let embedder = Embedder::load_calibrated(model, &cfg.embedding, Some(&cfg.data_dir))
        .map_err(|e| match e {
            // Never a silent CPU fallback: say what the driver and libtorch each see.
            kb_embed::EmbedError::Device(m) if cfg.embedding.device.trim() != "cpu" => {
                anyhow::anyhow!(
                    "embedding.device {:?}: {m}; {}",
                    cfg.embedding.device,
                    crate::gpu::DeviceViews::probe().explain()
                )
            }
            other => other.into(),
        })
        .with_context(|| format!("loading model {}", model.display()))?;
    tracing::info!(requested = %cfg.embedding.device, devices = ?embedder.devices(),
        precision = embedder.precision(), "embedding devices chosen");
    let identity = crate::log::ModelIdentity::of(&embedder, model)
        .with_context(|| format!("reading model {} for its digest", model.display()))?;
    tracing::info!(model = %identity.describe(), "model identity");
    let reranker = match &cfg.reranker {
        None => None,
        Some(r) => {
            // Like the embedder's, its CPU `precision: auto` is measured and cached.
            let engine = r.engine_config(&cfg.embedding);
            let dir = Some(cfg.data_dir.as_path());
            let reranker = kb_embed::Reranker::load_calibrated(&r.model, &engine, dir)
                .with_context(|| {
                    format!(
                        "loading the cross-encoder of reranker.model {} (a sentence-transformers \
                         CrossEncoder directory)",
                        r.model.display()
                    )
                })?;
            Some((reranker, r.max_texts))
        }
    };
    let chunker = Chunker::new(&cfg.chunking, embedder.tokenizer());
    warn_if_chunks_overflow(&embedder, cfg.chunking.max_tokens);
    let device = index_placement(&embedder.devices(), &cfg.index);
    let opening = || format!("opening data directory {}", cfg.data_dir.display());
    let cache = cfg.cache.enabled.then(|| {
        // Cached query vectors depend on pooling, normalisation and the query prefix too.
        let settings = format!(
            "{}/{}/{}/{}/{}/{:?}",
            embedder.precision(),
            embedder.max_seq_len(),
            embedder.dim(),
            embedder.pooling().name(),
            embedder.normalizes(),
            embedder.prefix(kb_embed::TextKind::Query)
        );
        let l2 = log
            .as_ref()
            .map(|l| (l.client().clone(), l.prefix().to_string()));
        QueryCache::new(
            &cfg.cache,
            l2,
            model_fingerprint(&identity.digest, &settings),
            metrics,
        )
    });
    let (store, replicator) = match log {
        None => {
            let (store, recovery) =
                Store::open(&cfg.data_dir, cfg, device).with_context(opening)?;
            tracing::info!(?recovery, devices = ?embedder.devices(), "engine loaded");
            (Arc::new(store), None)
        }
        Some(log) => {
            let store =
                Arc::new(Store::open_replicated(&cfg.data_dir, cfg, device).with_context(opening)?);
            let replicator = Replicator::new(log, store.clone(), cfg.replication.clone());
            tracing::info!(status = ?replicator.status(), devices = ?embedder.devices(), "engine loaded; replaying the stream");
            (store, Some(replicator))
        }
    };
    Ok(Engine {
        searches: SearchBatcher::with_threads(store.clone(), search_threads(cfg)),
        store,
        embedder,
        chunker,
        replicator,
        cache,
        reranker,
        model: identity,
        replica: job_owner(cfg),
        reindex: Default::default(),
    })
}

/// This worker's name as the owner of re-index jobs: `replication.replica_id`, else the
/// pod's name (stable across restarts, unlike the replica id's default), else `local`.
fn job_owner(cfg: &WorkerConfig) -> String {
    cfg.replication
        .replica_id
        .clone()
        .or_else(|| std::env::var("POD_NAME").ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "local".into())
}

/// Binds the collections written before bindings existed to this worker's model, once
/// this worker has applied the whole log (a replica behind the stream might not see the
/// binding another replica already wrote).
async fn adopt_when_caught_up(engine: &Engine) {
    if let Some(replicator) = &engine.replicator {
        while !replicator.is_caught_up() {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    if let Err(e) = engine.adopt_unbound().await {
        tracing::warn!(error = %e, "could not record the model of older collections; retried at the next start");
    }
}

/// With `on_model_mismatch: exit`, stops the worker when collections hold vectors of
/// another model, with the reason (the pod's termination message). The message starts
/// with `model_mismatch:` for the operator.
pub(crate) fn check_models(engine: &Engine, policy: OnModelMismatch) -> anyhow::Result<()> {
    let mismatched = engine.mismatched_unattended(&engine.store.view());
    if policy != OnModelMismatch::Refuse && !mismatched.is_empty() {
        bail!(
            "model_mismatch: this worker embeds with {}, and these collections hold vectors of \
             another model: {}. Run the model they were made with (revert \
             spec.embedding.modelPath or modelVolume), or re-index them for this model",
            engine.model.describe(),
            mismatched.join(", ")
        );
    }
    Ok(())
}

/// Warns when a full chunk, with the document prefix and the special tokens, is longer
/// than the model reads: its end would be cut off (and counted as truncated).
fn warn_if_chunks_overflow(embedder: &kb_embed::Embedder, chunk_tokens: usize) {
    let prefix = embedder.prefix(kb_embed::TextKind::Document);
    let prefix_tokens = embedder
        .tokenizer()
        .encode(prefix, false)
        .map_or(0, |e| e.len());
    let needed = chunk_tokens + prefix_tokens + 2;
    if needed > embedder.max_seq_len() {
        tracing::warn!(
            chunk_tokens,
            prefix,
            prefix_tokens,
            max_seq_len = embedder.max_seq_len(),
            "chunking.max_tokens plus the document prefix and 2 special tokens exceeds the \
             model's input length: the end of full chunks is not embedded; lower \
             chunking.max_tokens"
        );
    }
}

/// Replicated mode: connects to Redis and, when this replica's data is missing or the
/// stream no longer covers it, installs a peer's snapshot first. Registers the replica
/// from the moment it is connected (the returned task; abort it once the replicator
/// runs), so that the stream is not trimmed past what it will replay while it
/// bootstraps and loads.
async fn connect_replica(
    cfg: &WorkerConfig,
) -> anyhow::Result<Option<(RedisLog, tokio::task::JoinHandle<()>)>> {
    let Some(redis) = &cfg.redis else {
        return Ok(None);
    };
    let log = RedisLog::connect_patiently(redis)
        .await
        .context("connecting to Redis (redis.url / redis.nodes, redis.start_wait_ms)")?;
    let id = replica::replica_id(&cfg.replication);
    let starting = replica::heartbeat_while_starting(log.clone(), id, &cfg.data_dir);
    replica::bootstrap(&log, &cfg.replication, &cfg.data_dir).await?;
    // A data directory ahead of the stream (restored from a backup into a new knowledge
    // base, or Redis lost its data) continues the stream after its sequence.
    let local = crate::snapshot::list(&cfg.data_dir.join("snapshots"))?
        .first()
        .map_or(0, |(seq, _)| *seq);
    if local > log.last_seq().await? {
        let last = log.start_at(local).await?;
        if last < local {
            anyhow::bail!(
                "this data directory is at sequence {local} but the Redis stream (prefix {:?}) \
                 ends at {last}: it holds another history. Give a knowledge base restored from \
                 a backup its own redis.key_prefix, or start this replica with an empty data \
                 volume to bootstrap from a peer",
                log.prefix()
            );
        }
        tracing::info!(
            sequence = local,
            "the stream continues after this data directory's snapshot"
        );
    }
    Ok(Some((log, starting)))
}

/// How often the API-keys file is checked for a new version (a rotated Secret).
const KEYS_RELOAD_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Re-reads the API-keys file on SIGHUP and every [`KEYS_RELOAD_EVERY`]; a file that does
/// not parse keeps the keys in force (see [`crate::auth::Auth::reload`]).
async fn reload_keys(state: SharedState) {
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(e) => {
            tracing::warn!(error = %e, "no SIGHUP handler; API keys reload on a timer only");
            None
        }
    };
    let mut tick = tokio::time::interval(KEYS_RELOAD_EVERY);
    loop {
        let signalled = async {
            match hangup.as_mut() {
                Some(h) => h.recv().await.is_some(),
                None => std::future::pending().await,
            }
        };
        let by_signal = tokio::select! {
            got = signalled => got,
            _ = tick.tick() => false,
        };
        match state.auth.reload() {
            Ok(Some(reloaded)) => {
                tracing::info!(keys = reloaded.keys, "API keys reloaded");
                for entry in &reloaded.rejected {
                    tracing::error!(%entry, "API keys file: invalid entry left out; it grants nothing until fixed");
                }
                state
                    .metrics
                    .set_api_keys_reload_failed(!reloaded.rejected.is_empty());
            }
            Ok(None) if by_signal => tracing::info!("SIGHUP: API keys file unchanged"),
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "API keys file not reloaded; the previous keys stay in force");
                state.metrics.set_api_keys_reload_failed(true);
            }
        }
    }
}

/// Returns at SIGTERM or Ctrl-C, `delay` after it: meanwhile the worker reports not ready
/// and keeps serving (`shutdown_delay_seconds`), so the Service's endpoints drop it
/// before its listener closes.
async fn shutdown_signal(state: SharedState, delay: std::time::Duration) {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
    state.start_draining();
    if !delay.is_zero() {
        tracing::info!(
            delay_s = delay.as_secs(),
            "shutting down: not ready, still serving until the delay ends"
        );
        tokio::time::sleep(delay).await;
    }
    tracing::info!("shutting down");
}

/// Runs the worker until SIGTERM or Ctrl-C.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let cfg = resolve_config(&args)?;
    let listen: SocketAddr = cfg
        .listen
        .parse()
        .with_context(|| format!("invalid listen address {}", cfg.listen))?;
    let metrics_listen: SocketAddr = cfg
        .metrics_listen
        .parse()
        .with_context(|| format!("invalid metrics address {}", cfg.metrics_listen))?;
    let auth = auth_for(&cfg, &listen)?;
    let state: SharedState = Arc::new(AppState::new(
        auth,
        cfg.limits.clone(),
        Arc::new(Metrics::new()),
    ));
    let api_listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let metrics_listener = tokio::net::TcpListener::bind(metrics_listen)
        .await
        .with_context(|| format!("binding {metrics_listen}"))?;
    tracing::info!(%listen, %metrics_listen, "listening; loading model and data");
    let metrics_app = crate::metrics::router(state.clone());
    tokio::spawn(async move { axum::serve(metrics_listener, metrics_app).await });
    tokio::spawn(reload_keys(state.clone()));
    let loader_state = state.clone();
    let on_mismatch = cfg.on_model_mismatch;
    let wanted = crate::reindex::wanted::Wanted::from_config(&cfg);
    let shutdown_delay = cfg.shutdown_delay();
    let loader = tokio::spawn(async move {
        let (log, starting) = connect_replica(&cfg).await?.unzip();
        let metrics = loader_state.metrics.clone();
        let engine = tokio::task::spawn_blocking(move || load_engine(&cfg, log, metrics)).await??;
        if let Some(replicator) = &engine.replicator {
            replicator.start();
        }
        if let Some(task) = starting {
            task.abort();
        }
        let engine = Arc::new(engine);
        loader_state.set_engine(engine.clone());
        tracing::info!("model loaded and data opened");
        adopt_when_caught_up(&engine).await;
        crate::reindex::resume(&engine).await;
        if on_mismatch == OnModelMismatch::Reindex {
            crate::reindex::wanted::check(&engine, &wanted).await;
            let period = crate::reindex::wanted::PERIOD;
            tokio::spawn(crate::reindex::wanted::follow(
                engine.clone(),
                wanted,
                period,
            ));
        }
        check_models(&engine, on_mismatch)
    });
    let app = api::router(state.clone());
    let stopping = shutdown_signal(state.clone(), shutdown_delay);
    let mut server = tokio::spawn(async move {
        axum::serve(api_listener, app)
            .with_graceful_shutdown(stopping)
            .await
    });
    // A failed load ends the process with its reason; a shutdown during load ends it too.
    tokio::select! {
        res = &mut server => return res?.context("HTTP server failed"),
        res = loader => res??,
    }
    server.await?.context("HTTP server failed")?;
    if let Ok(engine) = state.engine() {
        if let Some(replicator) = &engine.replicator {
            replicator.shutdown().await;
        }
        let store = engine.store.clone();
        tokio::task::spawn_blocking(move || store.wait_for_background_snapshot()).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
