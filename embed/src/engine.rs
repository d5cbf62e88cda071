//! The public handle: loads everything, owns the scheduler thread, answers requests.

use crate::batcher::{run_scheduler, Budgets, Inputs, Lane, RequestQueue};
use crate::device::{
    device_name, parse_devices, preferred_batch_tokens, preferred_bulk_batch_tokens, resolve_kind,
};
use crate::executor::{Dispatcher, ReplicaSpec};
use crate::model_config::ModelSpec;
use crate::stats::{Counters, EngineStats};
use crate::tokenize::{SpecialTokens, TextTokenizer};
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
    name: String,
    tokenizer: tokenizers::Tokenizer,
    dim: usize,
    max_seq_len: usize,
    devices: Vec<String>,
    precision: &'static str,
    special: SpecialTokens,
    vocab_size: usize,
    queue: Arc<RequestQueue>,
    counters: Arc<Counters>,
    scheduler: Mutex<Option<JoinHandle<()>>>,
}

impl Embedder {
    /// Loads model + tokenizer and starts one executor thread per device (`cfg.device`:
    /// "cpu", "cuda", "cuda:0,1", "auto" = cuda if available else cpu; precision Auto =
    /// fp16 on CUDA, bf16 on CPUs with native bf16, else fp32). Returns once every replica
    /// is loaded.
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
        let queue = Arc::new(RequestQueue::new(
            [cfg.queue_capacity, cfg.bulk_queue_capacity],
            Arc::clone(&counters),
        ));
        let dispatcher = Dispatcher::start(specs, Arc::clone(&counters), &queue)?;
        let plain = tokenizer.plain().clone();
        let special = tokenizer.special_tokens()?;
        let vocab_size = plain.get_vocab_size(true);
        let budgets = budgets(cfg, devices[0]);
        tracing::info!(?budgets, "embedding lanes");
        let scheduler = spawn_scheduler(&queue, tokenizer, dispatcher, budgets)?;
        tracing::info!(devices = ?names, precision = crate::device::kind_name(kind), max_seq_len, "embedding engine ready");
        Ok(Embedder {
            inner: Arc::new(Inner {
                name: cfg.model_name.clone().unwrap_or_else(|| model.name.clone()),
                tokenizer: plain,
                dim: model.bert.hidden_size as usize,
                max_seq_len,
                devices: names,
                precision: crate::device::kind_name(kind),
                special,
                vocab_size,
                queue,
                counters,
                scheduler: Mutex::new(Some(scheduler)),
            }),
        })
    }

    /// The served model's name (`all-MiniLM-L6-v2`).
    pub fn model_name(&self) -> &str {
        &self.inner.name
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

    /// Queues the texts in `lane` and awaits their vectors. Works on any async runtime.
    /// Fails at once with `QueueFull` when that lane has no room.
    pub async fn embed(&self, lane: Lane, texts: Vec<String>) -> Result<Embedded, EmbedError> {
        let answer = self.submit(lane, Inputs::Texts(texts.into()))?;
        answer.await.unwrap_or(Err(EmbedError::ShuttingDown))
    }

    /// Embeds texts given as token ids of this model's vocabulary (without special
    /// tokens, which are added here), truncated like texts. Ids outside the vocabulary are
    /// `InvalidInput`.
    pub async fn embed_token_ids(
        &self,
        lane: Lane,
        inputs: Vec<Vec<u32>>,
    ) -> Result<Embedded, EmbedError> {
        let tokens = inputs
            .iter()
            .map(|ids| self.wrap_token_ids(ids))
            .collect::<Result<_, _>>()?;
        let answer = self.submit(lane, Inputs::Tokens(tokens))?;
        answer.await.unwrap_or(Err(EmbedError::ShuttingDown))
    }

    /// Same as [`Embedder::embed`], blocking the calling thread (CLI, benches). Must not be
    /// called from inside an async runtime's worker thread.
    pub fn embed_blocking(&self, lane: Lane, texts: Vec<String>) -> Result<Embedded, EmbedError> {
        let answer = self.submit(lane, Inputs::Texts(texts.into()))?;
        answer
            .blocking_recv()
            .unwrap_or(Err(EmbedError::ShuttingDown))
    }

    fn wrap_token_ids(&self, ids: &[u32]) -> Result<crate::tokenize::TokenizedText, EmbedError> {
        if ids.is_empty() {
            return Err(EmbedError::InvalidInput(
                "an input of token ids is empty".into(),
            ));
        }
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.inner.vocab_size) {
            return Err(EmbedError::InvalidInput(format!(
                "token id {bad} is outside this model's vocabulary (0..{})",
                self.inner.vocab_size
            )));
        }
        Ok(self.inner.special.wrap(ids, self.inner.max_seq_len))
    }

    /// A snapshot of the counters, for Prometheus.
    pub fn stats(&self) -> EngineStats {
        self.inner.counters.snapshot()
    }

    fn submit(
        &self,
        lane: Lane,
        inputs: Inputs,
    ) -> Result<oneshot::Receiver<Result<Embedded, EmbedError>>, EmbedError> {
        let (reply, answer) = oneshot::channel();
        self.inner.queue.submit(lane, inputs, reply)?;
        Ok(answer)
    }
}

/// Texts taken from the bulk lane at a time: enough to sort into well-packed batches,
/// few enough that tokenizing them delays nothing.
const BULK_WINDOW: usize = 256;

/// The batch budgets of both lanes on `device`: the configured ones, capped at what the
/// device runs best.
fn budgets(cfg: &EmbeddingConfig, device: tch::Device) -> Budgets {
    let cap = |configured: usize, preferred: Option<usize>| {
        preferred.map_or(configured, |p| p.min(configured).max(cfg.max_seq_len))
    };
    let interactive_tokens = cap(cfg.max_batch_tokens, preferred_batch_tokens(device));
    let bulk_tokens = match cfg.bulk_batch_tokens {
        Some(tokens) => tokens,
        None => cap(cfg.max_batch_tokens, preferred_bulk_batch_tokens(device)),
    };
    Budgets {
        interactive_tokens,
        bulk_tokens,
        bulk_window: BULK_WINDOW,
    }
}

fn spawn_scheduler(
    queue: &Arc<RequestQueue>,
    tokenizer: TextTokenizer,
    dispatcher: Dispatcher,
    budgets: Budgets,
) -> Result<JoinHandle<()>, EmbedError> {
    let queue = Arc::clone(queue);
    std::thread::Builder::new()
        .name("kb-embed-batcher".into())
        .spawn(move || run_scheduler(queue, tokenizer, dispatcher, budgets))
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
