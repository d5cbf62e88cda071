//! Reranking with a cross-encoder: a sentence-transformers `CrossEncoder` directory
//! (`BertForSequenceClassification` with one label) scores (query, passage) pairs.
//!
//! The pair is encoded as `[CLS] query [SEP] passage [SEP]` with token types 0 and 1,
//! truncated `longest_first` to the model's length (what `CrossEncoder.predict` asks the
//! tokenizer for); the score is `classifier(tanh(pooler(CLS state)))`, run by the same
//! BERT encoder as embeddings ([`crate::bert`]), then the model's activation (sigmoid
//! unless the model declares identity, as `CrossEncoder.predict` does by default).

use crate::bert::{BertEncoder, Linear, Weights};
use crate::device::{device_name, kind_name, parse_devices, resolve_kind};
use crate::executor::is_out_of_memory;
use crate::model_config::{check_bert, max_seq_len, read_json, BertConfig};
use crate::packing::PackedBatch;
use crate::tokenize::{prefix, BYTES_PER_TOKEN};
use crate::{EmbedError, EmbeddingConfig};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use tch::{Device, Kind};
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

/// The cross-encoder's encoder plus its sequence-classification head, on one device.
struct Scorer {
    encoder: BertEncoder,
    pooler: Linear,
    classifier: Linear,
    device: Device,
}

impl Scorer {
    fn load(
        path: &Path,
        cfg: &BertConfig,
        device: Device,
        kind: Kind,
    ) -> Result<Scorer, EmbedError> {
        let _no_grad = tch::no_grad_guard();
        let mut w = Weights::read(path, device, kind)?;
        let encoder = BertEncoder::from_weights(&mut w, cfg)?;
        Ok(Scorer {
            encoder,
            pooler: w.linear("pooler.dense")?,
            classifier: w.linear("classifier")?,
            device,
        })
    }

    /// The logits of `rows` (ids and token types).
    fn logits(&self, rows: &[&Pair]) -> Result<Vec<f32>, tch::TchError> {
        let ids: Vec<&[i64]> = rows.iter().map(|r| r.ids.as_slice()).collect();
        let types: Vec<&[i64]> = rows.iter().map(|r| r.types.as_slice()).collect();
        let batch = PackedBatch::with_token_types(&ids, &types, self.device)?;
        let hidden = self.encoder.forward(&batch)?;
        let cls = hidden.f_index_select(0, &batch.first_tokens()?)?;
        let pooled = self.pooler.forward(&cls)?.f_tanh()?;
        let logits = self
            .classifier
            .forward(&pooled)?
            .f_to_kind(Kind::Float)?
            .f_to_device(Device::Cpu)?
            .f_view([-1])?;
        Vec::<f32>::try_from(&logits).map_err(|e| tch::TchError::Convert(e.to_string()))
    }

    /// [`Scorer::logits`], halving the rows when the device runs out of memory.
    fn logits_splitting_on_oom(&self, rows: &[&Pair]) -> Result<Vec<f32>, tch::TchError> {
        match self.logits(rows) {
            Err(err) if rows.len() > 1 && is_out_of_memory(&err) => {
                tracing::warn!(
                    rows = rows.len(),
                    "device out of memory, splitting rerank batch"
                );
                if self.device.is_cuda() {
                    crate::cuda_alloc::empty_cache();
                }
                let (first, second) = rows.split_at(rows.len() / 2);
                let mut logits = self.logits_splitting_on_oom(first)?;
                logits.extend(self.logits_splitting_on_oom(second)?);
                Ok(logits)
            }
            result => result,
        }
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

struct Job {
    query: String,
    passages: Vec<String>,
    reply: oneshot::Sender<JobResult>,
}

/// The cross-encoder engine: one executor thread owns the model on the first configured
/// device; requests queue in a bounded channel. Cheap to clone.
#[derive(Clone)]
pub struct Reranker {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    max_seq_len: usize,
    device: String,
    precision: &'static str,
    activation: Activation,
    sender: Mutex<Option<SyncSender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Reranker {
    /// Loads a cross-encoder directory (`config.json` of a `BertForSequenceClassification`
    /// with one label, `model.safetensors`, `tokenizer.json`) on the first device of
    /// `cfg.device` in `cfg.precision` (auto: fp16 on CUDA, bf16 on CPUs with native bf16,
    /// else fp32); inputs are cut at `cfg.max_seq_len` or the model's own limit.
    pub fn load(model_dir: &Path, cfg: &EmbeddingConfig) -> Result<Reranker, EmbedError> {
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
        let cuda_count = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
        let device = parse_devices(&cfg.device, cuda_count)?[0];
        let kind = resolve_kind(cfg.precision, device);
        let threads = cfg
            .cpu_cores
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
        let weights = model_dir.join("model.safetensors");
        let (sender, jobs) = sync_channel::<Job>(cfg.queue_capacity.max(1));
        let (loaded_tx, loaded_rx) = sync_channel(1);
        let batch_tokens = cfg.max_batch_tokens.max(max_seq_len);
        let thread = std::thread::Builder::new()
            .name(format!("kb-rerank-{}", device_name(device)))
            .spawn(move || {
                let _no_grad = tch::no_grad_guard();
                if device == Device::Cpu {
                    let _ = tch::get_num_threads();
                    tch::set_num_threads(i32::try_from(threads).unwrap_or(1));
                }
                let scorer = match Scorer::load(&weights, &bert, device, kind) {
                    Ok(scorer) => scorer,
                    Err(err) => {
                        let _ = loaded_tx.send(Err(err));
                        return;
                    }
                };
                let _ = loaded_tx.send(Ok(()));
                serve(&scorer, &tokenizer, jobs, batch_tokens);
            })
            .map_err(|e| EmbedError::Device(format!("cannot start reranker thread: {e}")))?;
        loaded_rx.recv().unwrap_or_else(|_| {
            Err(EmbedError::Device(
                "reranker thread died while loading".into(),
            ))
        })?;
        let name = model_dir
            .file_name()
            .map_or_else(|| "reranker".into(), |n| n.to_string_lossy().into_owned());
        tracing::info!(
            device = device_name(device),
            precision = kind_name(kind),
            max_seq_len,
            ?activation,
            "reranker ready"
        );
        Ok(Reranker {
            inner: Arc::new(Inner {
                name,
                max_seq_len,
                device: device_name(device),
                precision: kind_name(kind),
                activation,
                sender: Mutex::new(Some(sender)),
                thread: Mutex::new(Some(thread)),
            }),
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
        let sender = self.inner.sender.lock().unwrap_or_else(|e| e.into_inner());
        let sender = sender.as_ref().ok_or(EmbedError::ShuttingDown)?;
        match sender.try_send(job) {
            Ok(()) => Ok(answer),
            Err(TrySendError::Full(_)) => Err(EmbedError::QueueFull {
                retry_after_ms: 100,
            }),
            Err(TrySendError::Disconnected(_)) => Err(EmbedError::ShuttingDown),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.sender.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
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

/// The executor loop: each job's pairs sorted by length and run in batches of at most
/// `batch_tokens` padded tokens.
fn serve(scorer: &Scorer, tokenizer: &Tokenizer, jobs: Receiver<Job>, batch_tokens: usize) {
    let max = tokenizer.get_truncation().map_or(512, |t| t.max_length);
    for job in jobs {
        if job.reply.is_closed() {
            continue;
        }
        let result = tokenize(tokenizer, &job.query, &job.passages, max).and_then(|pairs| {
            let mut order: Vec<usize> = (0..pairs.len()).collect();
            order.sort_by_key(|&i| pairs[i].ids.len());
            let mut logits = vec![0f32; pairs.len()];
            let mut start = 0;
            while start < order.len() {
                let mut end = start + 1;
                while end < order.len()
                    && (end + 1 - start) * pairs[order[end]].ids.len() <= batch_tokens
                {
                    end += 1;
                }
                let rows: Vec<&Pair> = order[start..end].iter().map(|&i| &pairs[i]).collect();
                let got = scorer
                    .logits_splitting_on_oom(&rows)
                    .map_err(|e| EmbedError::Inference(e.to_string()))?;
                for (&i, l) in order[start..end].iter().zip(got) {
                    logits[i] = l;
                }
                start = end;
            }
            Ok(pairs
                .iter()
                .zip(logits)
                .map(|(p, l)| (l, p.truncated))
                .collect())
        });
        let _ = job.reply.send(result);
    }
}
