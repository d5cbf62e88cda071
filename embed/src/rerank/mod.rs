//! Reranking with a cross-encoder: a sentence-transformers `CrossEncoder` directory
//! (`BertForSequenceClassification` with one label) scores (query, passage) pairs.
//!
//! The pair is encoded as `[CLS] query [SEP] passage [SEP]` with token types 0 and 1,
//! truncated `longest_first` to the model's length (what `CrossEncoder.predict` asks the
//! tokenizer for); the score is `classifier(tanh(pooler(CLS state)))`, run by the same
//! BERT encoder as embeddings ([`crate::bert`]), then the model's activation (sigmoid
//! unless the model declares identity, as `CrossEncoder.predict` does by default).

mod precision;
mod queue;
mod scorer;

pub use precision::RerankTrial;

use crate::bert::BertEncoder;
use crate::calibrate::Calibration;
use crate::device::{device_name, kind_name, parse_devices, resolve_kind};
use crate::engine::executors;
use crate::model_config::{check_bert, max_seq_len, read_json, BertConfig};
use crate::tokenize::{prefix, BYTES_PER_TOKEN};
use crate::{EmbedError, EmbeddingConfig, Precision};
use queue::{Job, Plan, Queue};
use scorer::Scorer;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use tch::Device;
use tokenizers::{EncodeInput, Tokenizer, TruncationParams};
use tokio::sync::oneshot;

/// How logits become scores: `CrossEncoder.predict`'s activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `1 / (1 + e^-x)`, the default of single-label cross-encoders.
    Sigmoid,
    /// The logit itself.
    Identity,
}

impl Activation {
    fn apply(self, logit: f32) -> f32 {
        match self {
            Activation::Sigmoid => 1.0 / (1.0 + (-logit).exp()),
            Activation::Identity => logit,
        }
    }
}

/// The scores of one request's passages, in input order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Scored {
    /// The activated scores ([`Reranker::activation`] of the logits).
    pub scores: Vec<f32>,
    /// The classifier's raw logits.
    pub logits: Vec<f32>,
    /// Whether each pair was cut to [`Reranker::max_seq_len`] tokens.
    pub truncated: Vec<bool>,
}

/// `config.json` fields beyond the encoder's.
#[derive(Debug, Deserialize)]
struct HeadConfig {
    #[serde(default)]
    architectures: Vec<String>,
    num_labels: Option<usize>,
    #[serde(default)]
    id2label: BTreeMap<String, String>,
    /// Where sentence-transformers before 4.0 kept the activation.
    sbert_ce_default_activation_function: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct StConfig {
    activation_fn: Option<String>,
}

/// Reads the activation a cross-encoder directory declares; sigmoid when none.
fn activation(model_dir: &Path, head: &HeadConfig) -> Result<Activation, EmbedError> {
    let path = model_dir.join("config_sentence_transformers.json");
    let st: StConfig = if path.exists() {
        read_json(&path)?
    } else {
        StConfig::default()
    };
    let declared = st
        .activation_fn
        .or_else(|| head.sbert_ce_default_activation_function.clone());
    match declared
        .as_deref()
        .map(|p| p.rsplit('.').next().unwrap_or(p))
    {
        None | Some("Sigmoid") => Ok(Activation::Sigmoid),
        Some("Identity") => Ok(Activation::Identity),
        Some(other) => Err(EmbedError::ModelLoad(format!(
            "the cross-encoder's activation_fn {other:?} is not supported (Sigmoid and \
             Identity are)"
        ))),
    }
}

/// One tokenized (query, passage) pair.
struct Pair {
    ids: Vec<i64>,
    types: Vec<i64>,
    truncated: bool,
}

/// Each pair's logit and whether it was truncated, or why the job failed.
type JobResult = Result<Vec<(f32, bool)>, EmbedError>;

/// The cross-encoder engine: as many executors as the embedder would run on the first
/// configured device (on the CPU `cpu_executors`, unset one per core up to four, sharing
/// the cores and one copy of the weights; one on a GPU), all taking from one bounded
/// queue of requests, whose pairs they batch together ([`queue`]). Cheap to clone.
#[derive(Clone)]
pub struct Reranker {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    max_seq_len: usize,
    device: String,
    precision: &'static str,
    executors: usize,
    activation: Activation,
    calibration: Option<Calibration<RerankTrial>>,
    queue: Arc<Queue>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Reranker {
    /// Loads a cross-encoder directory (`config.json` of a `BertForSequenceClassification`
    /// with one label, `model.safetensors`, `tokenizer.json`) on the first device of
    /// `cfg.device` in `cfg.precision` (auto: fp16 on CUDA; on the CPU measured by
    /// [`Reranker::load_calibrated`] without a cache); inputs are cut at
    /// `cfg.max_seq_len` or the model's own limit.
    pub fn load(model_dir: &Path, cfg: &EmbeddingConfig) -> Result<Reranker, EmbedError> {
        Self::load_calibrated(model_dir, cfg, None)
    }

    /// [`Reranker::load`]; with `precision: auto` on the CPU the precision is measured
    /// (fp32 and bf16 timed on query/passage pairs, bf16's logits checked against fp32's)
    /// and the measurement is cached in `cache_dir` (the data directory) when given.
    pub fn load_calibrated(
        model_dir: &Path,
        cfg: &EmbeddingConfig,
        cache_dir: Option<&Path>,
    ) -> Result<Reranker, EmbedError> {
        let config_path = model_dir.join("config.json");
        let bert: BertConfig = read_json(&config_path)?;
        check_bert(&bert)?;
        let head: HeadConfig = read_json(&config_path)?;
        if !head.architectures.is_empty()
            && !head
                .architectures
                .iter()
                .any(|a| a == "BertForSequenceClassification")
        {
            return Err(EmbedError::ModelLoad(format!(
                "config.json: architectures {:?}; a cross-encoder must be a \
                 BertForSequenceClassification",
                head.architectures
            )));
        }
        // HF's default without either key is two labels.
        let labels = head.num_labels.unwrap_or(match head.id2label.len() {
            0 => 2,
            n => n,
        });
        if labels != 1 {
            return Err(EmbedError::ModelLoad(format!(
                "config.json: {labels} labels; a reranker has exactly one (num_labels: 1)"
            )));
        }
        let activation = activation(model_dir, &head)?;
        let max_seq_len = cfg.max_seq_len.min(max_seq_len(model_dir, &bert)?);
        if max_seq_len < 4 {
            return Err(EmbedError::ModelLoad(format!(
                "max_seq_len {max_seq_len} leaves no room for a query and a passage"
            )));
        }
        let tokenizer = pair_tokenizer(model_dir, max_seq_len)?;
        let name = model_dir
            .file_name()
            .map_or_else(|| "reranker".into(), |n| n.to_string_lossy().into_owned());
        let cuda_count = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
        let device = parse_devices(&cfg.device, cuda_count)?[0];
        let cores = cfg
            .cpu_cores
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
        let plans = executors(&[device], cfg.cpu_executors, cores);
        let weights = model_dir.join("model.safetensors");
        let calibration = match plans[0].threads {
            Some(threads) if device == Device::Cpu && cfg.precision == Precision::Auto => Some(
                precision::calibrate_cpu(&name, &weights, &bert, threads, max_seq_len, cache_dir)?,
            ),
            _ => None,
        };
        let kind = calibration
            .as_ref()
            .map_or_else(|| resolve_kind(cfg.precision, device), Calibration::kind);
        // CPU executors share one copy of the encoder's weights.
        let shared = if plans.len() > 1 && device == Device::Cpu {
            Some(BertEncoder::load(&weights, &bert, device, kind)?)
        } else {
            None
        };
        let plan = Plan {
            batch_tokens: cfg.max_batch_tokens.max(max_seq_len),
            executors: plans.len(),
            max_seq_len,
        };
        let queue = Arc::new(Queue::new(cfg.queue_capacity));
        let mut threads = Vec::new();
        let mut loads = Vec::new();
        for executor in &plans {
            let (loaded_tx, loaded_rx) = sync_channel(1);
            let (jobs, tokenizer, weights, bert) = (
                Arc::clone(&queue),
                tokenizer.clone(),
                weights.clone(),
                bert.clone(),
            );
            let shared = shared.as_ref().map(BertEncoder::share);
            let cpu_threads = executor.threads;
            let thread = std::thread::Builder::new()
                .name(format!("kb-rerank-{}", executor.name))
                .spawn(move || {
                    let _no_grad = tch::no_grad_guard();
                    if let Some(threads) = cpu_threads {
                        // As the embedder's executors do: libtorch sets a thread's OpenMP
                        // count on its first parallel op; take that step first.
                        let _ = tch::get_num_threads();
                        tch::set_num_threads(threads);
                    }
                    let scorer = match Scorer::load(&weights, &bert, device, kind, shared.as_ref())
                    {
                        Ok(scorer) => scorer,
                        Err(err) => {
                            let _ = loaded_tx.send(Err(err));
                            return;
                        }
                    };
                    drop(shared);
                    let _ = loaded_tx.send(Ok(()));
                    queue::serve(&jobs, &scorer, &tokenizer, plan);
                });
            match thread {
                Ok(thread) => threads.push(thread),
                Err(e) => {
                    queue.close();
                    return Err(EmbedError::Device(format!(
                        "cannot start reranker thread: {e}"
                    )));
                }
            }
            loads.push(loaded_rx);
        }
        drop(shared);
        let inner = Inner {
            name,
            max_seq_len,
            device: device_name(device),
            precision: kind_name(kind),
            executors: plans.len(),
            activation,
            calibration,
            queue,
            threads: Mutex::new(threads),
        };
        for loaded in loads {
            // On failure `inner` is dropped: the queue closes and the threads end.
            loaded.recv().unwrap_or_else(|_| {
                Err(EmbedError::Device(
                    "reranker thread died while loading".into(),
                ))
            })?;
        }
        tracing::info!(
            device = %inner.device,
            precision = inner.precision,
            executors = inner.executors,
            threads_each = plans[0].threads,
            batch_tokens = plan.batch_tokens,
            max_seq_len,
            ?activation,
            "reranker ready"
        );
        Ok(Reranker {
            inner: Arc::new(inner),
        })
    }

    /// The model directory's name.
    pub fn model_name(&self) -> &str {
        &self.inner.name
    }

    /// Tokens (special tokens included) a pair is cut to.
    pub fn max_seq_len(&self) -> usize {
        self.inner.max_seq_len
    }

    /// The device the model runs on (`cpu`, `cuda:0`).
    pub fn device(&self) -> &str {
        &self.inner.device
    }

    /// `fp32`, `fp16` or `bf16`.
    pub fn precision(&self) -> &'static str {
        self.inner.precision
    }

    /// How `precision: auto` was decided on the CPU (measured or cached), if it was.
    pub fn calibration(&self) -> Option<&Calibration<RerankTrial>> {
        self.inner.calibration.as_ref()
    }

    /// Executor threads taking requests from the queue.
    pub fn executors(&self) -> usize {
        self.inner.executors
    }

    /// The activation applied to the logits.
    pub fn activation(&self) -> Activation {
        self.inner.activation
    }

    /// Scores each passage against `query` (activated scores, as `CrossEncoder.predict`).
    pub async fn score(&self, query: &str, passages: Vec<String>) -> Result<Vec<f32>, EmbedError> {
        Ok(self.score_detailed(query, passages).await?.scores)
    }

    /// Scores, logits and truncation of each passage against `query`. Fails at once with
    /// `QueueFull` when `queue_capacity` requests wait already.
    pub async fn score_detailed(
        &self,
        query: &str,
        passages: Vec<String>,
    ) -> Result<Scored, EmbedError> {
        let answer = self.submit(query, passages)?;
        let logits = answer.await.unwrap_or(Err(EmbedError::ShuttingDown))?;
        Ok(self.scored(logits))
    }

    /// [`Reranker::score_detailed`], blocking the calling thread (not from async code).
    pub fn score_blocking(&self, query: &str, passages: Vec<String>) -> Result<Scored, EmbedError> {
        let answer = self.submit(query, passages)?;
        let logits = answer
            .blocking_recv()
            .unwrap_or(Err(EmbedError::ShuttingDown))?;
        Ok(self.scored(logits))
    }

    fn scored(&self, logits: Vec<(f32, bool)>) -> Scored {
        let activation = self.inner.activation;
        Scored {
            scores: logits.iter().map(|&(l, _)| activation.apply(l)).collect(),
            logits: logits.iter().map(|&(l, _)| l).collect(),
            truncated: logits.iter().map(|&(_, t)| t).collect(),
        }
    }

    fn submit(
        &self,
        query: &str,
        passages: Vec<String>,
    ) -> Result<oneshot::Receiver<JobResult>, EmbedError> {
        if passages.is_empty() {
            return Err(EmbedError::EmptyInput);
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            query: query.to_string(),
            passages,
            reply,
        };
        self.inner.queue.submit(job)?;
        Ok(answer)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.queue.close();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for thread in threads {
            let _ = thread.join();
        }
    }
}

/// `tokenizer.json` without padding, truncating pairs `longest_first` to `max_seq_len`.
fn pair_tokenizer(model_dir: &Path, max_seq_len: usize) -> Result<Tokenizer, EmbedError> {
    let path = model_dir.join("tokenizer.json");
    let mut tokenizer = Tokenizer::from_file(&path)
        .map_err(|e| EmbedError::ModelLoad(format!("{}: {e}", path.display())))?;
    tokenizer.with_padding(None);
    let params = TruncationParams {
        max_length: max_seq_len,
        ..TruncationParams::default()
    };
    tokenizer
        .with_truncation(Some(params))
        .map_err(|e| EmbedError::ModelLoad(format!("max_seq_len {max_seq_len}: {e}")))?;
    Ok(tokenizer)
}

fn tokenize(
    tokenizer: &Tokenizer,
    query: &str,
    passages: &[String],
    max: usize,
) -> Result<Vec<Pair>, EmbedError> {
    let limit = max.saturating_mul(BYTES_PER_TOKEN);
    let (query, query_cut) = prefix(query, limit);
    let (inputs, cut): (Vec<EncodeInput>, Vec<bool>) = passages
        .iter()
        .map(|p| {
            let (passage, cut) = prefix(p, limit);
            (
                EncodeInput::Dual(query.into(), passage.into()),
                cut || query_cut,
            )
        })
        .unzip();
    let encodings = tokenizer
        .encode_batch(inputs, true)
        .map_err(|e| EmbedError::Tokenize(e.to_string()))?;
    Ok(encodings
        .into_iter()
        .zip(cut)
        .map(|(enc, cut)| Pair {
            ids: enc.get_ids().iter().map(|&id| i64::from(id)).collect(),
            types: enc.get_type_ids().iter().map(|&t| i64::from(t)).collect(),
            truncated: cut || !enc.get_overflowing().is_empty(),
        })
        .collect())
}
