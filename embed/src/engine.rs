//! The public handle: loads everything, owns the scheduler thread, answers requests.

use crate::batcher::{run_scheduler, RequestQueue};
use crate::device::{device_name, parse_devices, preferred_batch_tokens, resolve_kind};
use crate::executor::{Dispatcher, ReplicaSpec};
use crate::model_config::ModelSpec;
use crate::stats::{Counters, EngineStats};
use crate::tokenize::TextTokenizer;
use crate::{EmbedError, Embedded, EmbeddingConfig};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use tokio::sync::oneshot;

/// The embedding engine. Cheap to clone (an `Arc` inside); the engine stops when the last
/// clone is dropped, after finishing the batches already running.
#[derive(Clone)]
pub struct Embedder {
    inner: Arc<Inner>,
}

struct Inner {
    tokenizer: tokenizers::Tokenizer,
    dim: usize,
    max_seq_len: usize,
    devices: Vec<String>,
    precision: &'static str,
    queue: Arc<RequestQueue>,
    counters: Arc<Counters>,
    scheduler: Mutex<Option<JoinHandle<()>>>,
}

impl Embedder {
    /// Loads model + tokenizer and starts one executor thread per device (`cfg.device`:
    /// "cpu", "cuda", "cuda:0,1", "auto" = cuda if available else cpu; precision Auto =
    /// fp32 on CPU, fp16 on CUDA). Returns once every replica is loaded.
    pub fn load(model_dir: &Path, cfg: &EmbeddingConfig) -> Result<Embedder, EmbedError> {
        let model = ModelSpec::read(model_dir)?;
        let max_seq_len = cfg.max_seq_len.min(model.max_seq_len);
        if max_seq_len < 3 {
            return Err(EmbedError::ModelLoad(format!(
                "max_seq_len {max_seq_len} leaves no room for text between [CLS] and [SEP]"
            )));
        }
        let tokenizer = TextTokenizer::load(model_dir, max_seq_len)?;
        let cuda_count = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
        let devices = parse_devices(&cfg.device, cuda_count)?;
        let names: Vec<String> = devices.iter().map(|&d| device_name(d)).collect();
        let counters = Arc::new(Counters::new(names.clone()));
        let kind = resolve_kind(cfg.precision, devices[0]);
        let specs = devices
            .iter()
            .enumerate()
            .map(|(index, &device)| ReplicaSpec {
                weights: model_dir.join("model.safetensors"),
                model: model.clone(),
                device,
                kind: resolve_kind(cfg.precision, device),
                index,
            })
            .collect();
        let dispatcher = Dispatcher::start(specs, Arc::clone(&counters))?;
        let queue = Arc::new(RequestQueue::new(cfg.queue_capacity, Arc::clone(&counters)));
        let plain = tokenizer.plain().clone();
        let batch_tokens = preferred_batch_tokens(devices[0])
            .map_or(cfg.max_batch_tokens, |preferred| {
                preferred.min(cfg.max_batch_tokens)
            });
        let scheduler = spawn_scheduler(&queue, tokenizer, dispatcher, batch_tokens)?;
        tracing::info!(devices = ?names, precision = crate::device::kind_name(kind), max_seq_len, "embedding engine ready");
        Ok(Embedder {
            inner: Arc::new(Inner {
                tokenizer: plain,
                dim: model.bert.hidden_size as usize,
                max_seq_len,
                devices: names,
                precision: crate::device::kind_name(kind),
                queue,
                counters,
                scheduler: Mutex::new(Some(scheduler)),
            }),
        })
    }

    /// Length of every embedding vector.
    pub fn dim(&self) -> usize {
        self.inner.dim
    }

    /// Tokens (special tokens included) beyond which inputs are truncated.
    pub fn max_seq_len(&self) -> usize {
        self.inner.max_seq_len
    }

    /// The model's tokenizer, without truncation or padding, for token-aware chunking.
    pub fn tokenizer(&self) -> &tokenizers::Tokenizer {
        &self.inner.tokenizer
    }

    /// The devices running replicas, e.g. `["cpu"]` or `["cuda:0", "cuda:1"]`.
    pub fn devices(&self) -> Vec<String> {
        self.inner.devices.clone()
    }

    /// Precision of the replicas: `fp32`, `fp16` or `bf16`.
    pub fn precision(&self) -> &'static str {
        self.inner.precision
    }

    /// Queues the texts on the batcher and awaits their vectors. Works on any async
    /// runtime. Fails at once with `QueueFull` when the bounded queue has no room.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Embedded, EmbedError> {
        let answer = self.submit(texts)?;
        answer.await.unwrap_or(Err(EmbedError::ShuttingDown))
    }

    /// Same as [`Embedder::embed`], blocking the calling thread (CLI, benches). Must not be
    /// called from inside an async runtime's worker thread.
    pub fn embed_blocking(&self, texts: Vec<String>) -> Result<Embedded, EmbedError> {
        let answer = self.submit(texts)?;
        answer
            .blocking_recv()
            .unwrap_or(Err(EmbedError::ShuttingDown))
    }

    /// A snapshot of the counters, for Prometheus.
    pub fn stats(&self) -> EngineStats {
        self.inner.counters.snapshot()
    }

    fn submit(
        &self,
        texts: Vec<String>,
    ) -> Result<oneshot::Receiver<Result<Embedded, EmbedError>>, EmbedError> {
        let (reply, answer) = oneshot::channel();
        self.inner.queue.submit(texts, reply)?;
        Ok(answer)
    }
}

fn spawn_scheduler(
    queue: &Arc<RequestQueue>,
    tokenizer: TextTokenizer,
    dispatcher: Dispatcher,
    max_batch_tokens: usize,
) -> Result<JoinHandle<()>, EmbedError> {
    let queue = Arc::clone(queue);
    std::thread::Builder::new()
        .name("kb-embed-batcher".into())
        .spawn(move || run_scheduler(queue, tokenizer, dispatcher, max_batch_tokens))
        .map_err(|e| EmbedError::Device(format!("cannot start batcher thread: {e}")))
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.queue.close();
        let scheduler = self
            .scheduler
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(thread) = scheduler {
            let _ = thread.join();
        }
    }
}
