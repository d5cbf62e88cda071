//! The public handle: loads everything, owns the scheduler thread, answers requests.

use crate::batcher::{run_scheduler, Budgets, Inputs, Lane, RequestQueue};
use crate::bert::BertEncoder;
use crate::calibrate::budget::{self, BudgetTrial};
use crate::calibrate::layout::{self, LayoutTrial};
use crate::device::{
    device_name, parse_devices, preferred_batch_tokens, preferred_bulk_batch_tokens, resolve_kind,
};
use crate::executor::{Dispatcher, ReplicaSpec};
use crate::model_config::ModelSpec;
use crate::pooling::Pooling;
use crate::prefix::{Prefixes, TextKind};
use crate::stats::{Counters, EngineStats};
use crate::tokenize::{SpecialTokens, TextTokenizer};
use crate::{EmbedError, Embedded, EmbeddingConfig, Precision};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use tch::Device;
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
    prefixes: Prefixes,
    pooling: Pooling,
    normalize: bool,
    queue: Arc<RequestQueue>,
    counters: Arc<Counters>,
    scheduler: Mutex<Option<JoinHandle<()>>>,
    calibration: Option<crate::calibrate::Calibration>,
    layout: Option<crate::calibrate::Calibration<LayoutTrial>>,
    bulk_budget: Option<crate::calibrate::Calibration<BudgetTrial>>,
    bulk_tokens: usize,
}

impl Embedder {
    /// Loads model + tokenizer and starts one executor thread per device (`cfg.device`:
    /// "cpu", "cuda", "cuda:0,1", "auto" = cuda if available else cpu; precision Auto =
    /// fp16 on CUDA, on the CPU measured by [`Embedder::load_calibrated`] without a
    /// cache). Returns once every replica is loaded.
    pub fn load(model_dir: &Path, cfg: &EmbeddingConfig) -> Result<Embedder, EmbedError> {
        Self::load_calibrated(model_dir, cfg, None)
    }

    /// [`Embedder::load`]; with `precision: auto` on the CPU the precision is measured
    /// ([`crate::calibrate`]), and the measurement is cached in `cache_dir` (the data
    /// directory) when given.
    pub fn load_calibrated(
        model_dir: &Path,
        cfg: &EmbeddingConfig,
        cache_dir: Option<&Path>,
    ) -> Result<Embedder, EmbedError> {
        let model = ModelSpec::read(model_dir)?;
        let prefixes = Prefixes::resolve(cfg, &model)?;
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
        let cores = cfg
            .cpu_cores
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
        let mut executors = executors(&devices, cfg.cpu_executors, cores);
        let weights = model_dir.join("model.safetensors");
        let calibration = match executors.iter().find(|e| e.device == Device::Cpu) {
            Some(cpu) if cfg.precision == Precision::Auto => Some(crate::calibrate::embedder(
                &weights,
                &model,
                cpu.threads.unwrap_or(1),
                max_seq_len,
                cache_dir,
            )?),
            _ => None,
        };
        let kind_on = |device: Device| match (&calibration, device) {
            (Some(c), Device::Cpu) => c.kind(),
            _ => resolve_kind(cfg.precision, device),
        };
        let kind = kind_on(devices[0]);
        // With `cpu_executors` unset, the split of the cores into executors is measured
        // too, in the precision they run ([`crate::calibrate::layout`]).
        let layout = match cfg.cpu_executors {
            None if devices.contains(&Device::Cpu)
                && layout::candidates(cores, MAX_AUTO_CPU_EXECUTORS).len() > 1 =>
            {
                Some(layout::cached_or_measured_layout(
                    &weights,
                    &model.bert,
                    model.head.pooling,
                    kind_on(Device::Cpu),
                    cores,
                    MAX_AUTO_CPU_EXECUTORS,
                    max_seq_len,
                    cache_dir,
                )?)
            }
            _ => None,
        };
        if let Some(n) = layout
            .as_ref()
            .and_then(|l| layout::executors_of(&l.chosen))
        {
            executors = self::executors(&devices, Some(n), cores);
        }
        // With `bulk_batch_tokens` unset, the bulk lane's budget on the CPU is measured on
        // one executor as it will run ([`crate::calibrate::budget`]).
        let bulk_budget = match executors.iter().find(|e| e.device == Device::Cpu) {
            Some(cpu) if cfg.bulk_batch_tokens.is_none() && devices[0] == Device::Cpu => {
                budget::cached_or_measured_budget(
                    &weights,
                    &model.bert,
                    model.head.pooling,
                    kind_on(Device::Cpu),
                    cpu.threads.unwrap_or(1),
                    max_seq_len,
                    cfg.max_batch_tokens,
                    cache_dir,
                )?
            }
            _ => None,
        };
        let counters = Arc::new(Counters::new(
            executors.iter().map(|e| e.name.clone()).collect(),
        ));
        // CPU executors share one copy of the weights (each would otherwise hold its own).
        let cpu_weights = if executors.iter().filter(|e| e.device == Device::Cpu).count() > 1 {
            let kind = kind_on(Device::Cpu);
            Some(BertEncoder::load(&weights, &model.bert, Device::Cpu, kind)?)
        } else {
            None
        };
        let specs: Vec<ReplicaSpec> = executors
            .into_iter()
            .enumerate()
            .map(|(index, e)| ReplicaSpec {
                weights: weights.clone(),
                model: model.clone(),
                device: e.device,
                kind: kind_on(e.device),
                index,
                threads: e.threads,
                shared: match (&cpu_weights, e.device) {
                    (Some(encoder), Device::Cpu) => Some(encoder.share()),
                    _ => None,
                },
            })
            .collect();
        drop(cpu_weights);
        let queue = Arc::new(RequestQueue::new(
            [cfg.queue_capacity, cfg.bulk_queue_capacity],
            Arc::clone(&counters),
        ));
        let cpu_share = specs_cpu_share(&specs);
        let dispatcher = Dispatcher::start(specs, Arc::clone(&counters), &queue)?;
        if let Some(threads) = cpu_share {
            // The process-wide count other threads start from (CPU searches, tokenizers):
            // the executors' share too, so concurrent work does not oversubscribe the cores
            // (left at two threads on 2 cores, two executors gained 2-6% over one on text
            // queries instead of 33%).
            tch::set_num_threads(threads);
        }
        let plain = tokenizer.plain().clone();
        let special = tokenizer.special_tokens()?;
        let vocab_size = plain.get_vocab_size(true);
        let mut budgets = budgets(cfg, devices[0]);
        if let Some(tokens) = bulk_budget.as_ref().and_then(budget::tokens_of) {
            budgets.bulk_tokens = tokens;
        }
        tracing::info!(?budgets, "embedding lanes");
        let scheduler = spawn_scheduler(&queue, tokenizer, dispatcher, budgets)?;
        tracing::info!(devices = ?names, precision = crate::device::kind_name(kind), max_seq_len,
            pooling = model.head.pooling.name(), normalize = model.head.normalize,
            query_prefix = prefixes.get(TextKind::Query),
            document_prefix = prefixes.get(TextKind::Document), "embedding engine ready");
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
                prefixes,
                pooling: model.head.pooling,
                normalize: model.head.normalize,
                queue,
                counters,
                scheduler: Mutex::new(Some(scheduler)),
                calibration,
                layout,
                bulk_budget,
                bulk_tokens: budgets.bulk_tokens,
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

    /// How `precision: auto` was decided on the CPU (measured or cached), if it was.
    pub fn calibration(&self) -> Option<&crate::calibrate::Calibration> {
        self.inner.calibration.as_ref()
    }

    /// How the CPU's cores were split into executors when `cpu_executors` is unset
    /// (measured or cached), if they were.
    pub fn layout_calibration(&self) -> Option<&crate::calibrate::Calibration<LayoutTrial>> {
        self.inner.layout.as_ref()
    }

    /// How the bulk lane's batch budget was chosen on the CPU when `bulk_batch_tokens` is
    /// unset (measured or cached), if it was.
    pub fn bulk_budget_calibration(&self) -> Option<&crate::calibrate::Calibration<BudgetTrial>> {
        self.inner.bulk_budget.as_ref()
    }

    /// Tokens of one bulk batch (the budget configured, measured or by default).
    pub fn bulk_batch_tokens(&self) -> usize {
        self.inner.bulk_tokens
    }

    /// Precision of the replicas: `fp32`, `fp16` or `bf16`.
    pub fn precision(&self) -> &'static str {
        self.inner.precision
    }

    /// How the model pools token states into one vector.
    pub fn pooling(&self) -> Pooling {
        self.inner.pooling
    }

    /// Whether vectors come out L2-normalised: the model directory's `modules.json` lists a
    /// `Normalize` module, or the directory has no `modules.json` (then always, as before
    /// model families were read). Otherwise vectors keep the length pooling gives them.
    pub fn normalizes(&self) -> bool {
        self.inner.normalize
    }

    /// The prefix [`Embedder::embed_as`] puts before texts of `kind` (empty: none).
    pub fn prefix(&self, kind: TextKind) -> &str {
        self.inner.prefixes.get(kind)
    }

    /// Queues the texts in `lane` and awaits their vectors. Works on any async runtime.
    /// Fails at once with `QueueFull` when that lane has no room. The texts are embedded
    /// as given; [`Embedder::embed_as`] adds the query or document prefix.
    pub async fn embed(&self, lane: Lane, texts: Vec<String>) -> Result<Embedded, EmbedError> {
        let answer = self.submit(lane, Inputs::Texts(texts.into()))?;
        answer.await.unwrap_or(Err(EmbedError::ShuttingDown))
    }

    /// [`Embedder::embed`] of `texts` as queries or documents: each gets that kind's prefix
    /// (`embedding.query_prefix` / `document_prefix`, else the model's own prompt), whose
    /// tokens count toward `max_seq_len` and the returned token counts.
    pub async fn embed_as(
        &self,
        lane: Lane,
        kind: TextKind,
        texts: Vec<String>,
    ) -> Result<Embedded, EmbedError> {
        self.embed(lane, self.inner.prefixes.apply(kind, texts))
            .await
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

    /// [`Embedder::embed_as`], blocking the calling thread.
    pub fn embed_blocking_as(
        &self,
        lane: Lane,
        kind: TextKind,
        texts: Vec<String>,
    ) -> Result<Embedded, EmbedError> {
        self.embed_blocking(lane, self.inner.prefixes.apply(kind, texts))
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

/// One executor to start: its device, its name in the stats and its libtorch threads.
#[derive(Debug, PartialEq)]
pub(crate) struct ExecutorPlan {
    pub(crate) device: tch::Device,
    pub(crate) name: String,
    pub(crate) threads: Option<i32>,
}

/// One executor per GPU; on the CPU `cpu_executors` of them (unset: one per core, at most
/// [`MAX_AUTO_CPU_EXECUTORS`]), sharing the `cores` equally as libtorch threads. Measured
/// on 2 cores (docs/benchmarks.md, "CPU executors"): two single-threaded executors answer
/// text queries at 16 clients 1.33x as fast, a lone query in 13 ms instead of 18, and
/// embed a bulk ingest 1.2-1.4x as fast as one executor with two threads.
pub(crate) fn executors(
    devices: &[tch::Device],
    cpu_executors: Option<usize>,
    cores: usize,
) -> Vec<ExecutorPlan> {
    let mut plans = Vec::new();
    for &device in devices {
        if device != tch::Device::Cpu {
            plans.push(ExecutorPlan {
                device,
                name: device_name(device),
                threads: None,
            });
            continue;
        }
        let n = cpu_executors
            .unwrap_or_else(|| cores.min(MAX_AUTO_CPU_EXECUTORS))
            .max(1);
        let threads = i32::try_from((cores / n).max(1)).unwrap_or(1);
        for i in 0..n {
            plans.push(ExecutorPlan {
                device,
                name: if n == 1 {
                    "cpu".into()
                } else {
                    format!("cpu#{i}")
                },
                threads: Some(threads),
            });
        }
    }
    plans
}

/// The libtorch threads of the CPU executors, if any.
fn specs_cpu_share(specs: &[ReplicaSpec]) -> Option<i32> {
    specs
        .iter()
        .find(|s| s.device == tch::Device::Cpu)
        .and_then(|s| s.threads)
}

/// Most CPU executors chosen automatically.
const MAX_AUTO_CPU_EXECUTORS: usize = 4;

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

#[cfg(test)]
mod tests;
