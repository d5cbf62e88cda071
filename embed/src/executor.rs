//! One executor thread per device, each owning a model replica, and the dispatcher that
//! sends every batch to the least-loaded one.

use crate::batcher::RequestQueue;
use crate::bert::BertEncoder;
use crate::device::device_name;
use crate::model_config::ModelSpec;
use crate::packing::PackedBatch;
use crate::pooling::{l2_normalize, pool, Pooling};
use crate::request::Row;
use crate::stats::{BatchRecord, Counters};
use crate::EmbedError;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;
use tch::{Device, Kind, TchError};

/// Rows that run through the encoder together, shortest first.
pub(crate) struct Batch {
    rows: Vec<Row>,
    padded_len: usize,
}

impl Batch {
    /// Wraps rows sorted by ascending length (the last one sets the padded length).
    pub(crate) fn new(rows: Vec<Row>) -> Batch {
        let padded_len = rows.iter().map(|r| r.ids.len()).max().unwrap_or(0);
        Batch { rows, padded_len }
    }

    fn padded_tokens(&self) -> usize {
        self.rows.len() * self.padded_len
    }

    /// Drops rows whose request needs nothing more (failed, or its caller left); `None`
    /// when no row is left.
    pub(crate) fn without_settled_rows(mut self) -> Option<Batch> {
        self.rows.retain(|row| !row.request.is_settled());
        (!self.rows.is_empty()).then(|| Batch::new(self.rows))
    }
}

/// What an executor needs to build its replica.
pub(crate) struct ReplicaSpec {
    pub weights: PathBuf,
    pub model: ModelSpec,
    pub device: Device,
    pub kind: Kind,
    pub index: usize,
    /// libtorch threads of this executor (CPU replicas); `None` keeps the default.
    pub threads: Option<i32>,
    /// Weights already loaded on this device (shared by the CPU executors); `None` loads
    /// them from `weights`.
    pub shared: Option<BertEncoder>,
}

struct ExecutorHandle {
    sender: SyncSender<Batch>,
    /// Padded tokens sent to this executor and not finished yet.
    queued_tokens: Arc<AtomicUsize>,
    thread: JoinHandle<()>,
}

/// Routes batches to executors.
pub(crate) struct Dispatcher {
    executors: Vec<ExecutorHandle>,
}

impl Dispatcher {
    /// Starts one executor per replica spec and waits until every replica has loaded.
    /// Executors tell `queue` whenever they finish a batch.
    pub(crate) fn start(
        specs: Vec<ReplicaSpec>,
        counters: Arc<Counters>,
        queue: &Arc<RequestQueue>,
    ) -> Result<Dispatcher, EmbedError> {
        let mut executors = Vec::new();
        let mut loads = Vec::new();
        for spec in specs {
            // One batch may wait while one runs: the scheduler prepares the next batch
            // during the current one, yet keeps later requests in the queue where they
            // can still join larger, better-sorted rounds.
            let (sender, batches) = sync_channel::<Batch>(1);
            let (loaded_tx, loaded_rx) = sync_channel(1);
            let queued_tokens = Arc::new(AtomicUsize::new(0));
            let executor = Executor {
                queued_tokens: Arc::clone(&queued_tokens),
                counters: Arc::clone(&counters),
                queue: Arc::clone(queue),
                index: spec.index,
            };
            let thread = std::thread::Builder::new()
                .name(format!("kb-embed-{}", device_name(spec.device)))
                .spawn(move || executor.run(spec, batches, loaded_tx))
                .map_err(|e| EmbedError::Device(format!("cannot start executor thread: {e}")))?;
            executors.push(ExecutorHandle {
                sender,
                queued_tokens,
                thread,
            });
            loads.push(loaded_rx);
        }
        let dispatcher = Dispatcher { executors };
        for loaded in loads {
            let result = loaded.recv().unwrap_or_else(|_| {
                Err(EmbedError::Device(
                    "executor thread died while loading".into(),
                ))
            });
            if let Err(err) = result {
                dispatcher.shutdown();
                return Err(err);
            }
        }
        Ok(dispatcher)
    }

    /// How many executors there are.
    pub(crate) fn executors(&self) -> usize {
        self.executors.len()
    }

    /// How many executors have nothing running and nothing waiting.
    pub(crate) fn idle_executors(&self) -> usize {
        self.executors
            .iter()
            .filter(|e| e.queued_tokens.load(Relaxed) == 0)
            .count()
    }

    /// An executor with nothing running and nothing waiting, if any.
    pub(crate) fn idle_executor(&self) -> Option<usize> {
        self.executors
            .iter()
            .position(|e| e.queued_tokens.load(Relaxed) == 0)
    }

    /// Sends `batch` to executor `index` (from [`Dispatcher::idle_executor`]).
    pub(crate) fn dispatch_to(&self, index: usize, batch: Batch) {
        let executor = &self.executors[index];
        executor
            .queued_tokens
            .fetch_add(batch.padded_tokens(), Relaxed);
        if let Err(err) = executor.sender.send(batch) {
            fail_undeliverable(err.0);
        }
    }

    /// Sends `batch` to the executor with the fewest queued tokens that can take it now,
    /// or waits on the least-loaded one when all are busy.
    pub(crate) fn dispatch(&self, batch: Batch) {
        let mut order: Vec<&ExecutorHandle> = self.executors.iter().collect();
        order.sort_by_key(|e| e.queued_tokens.load(Relaxed));
        let tokens = batch.padded_tokens();
        let mut batch = batch;
        for executor in &order {
            executor.queued_tokens.fetch_add(tokens, Relaxed);
            match executor.sender.try_send(batch) {
                Ok(()) => return,
                Err(TrySendError::Full(b) | TrySendError::Disconnected(b)) => {
                    executor.queued_tokens.fetch_sub(tokens, Relaxed);
                    batch = b;
                }
            }
        }
        let least_loaded = order[0];
        least_loaded.queued_tokens.fetch_add(tokens, Relaxed);
        if let Err(err) = least_loaded.sender.send(batch) {
            fail_undeliverable(err.0);
        }
    }

    /// Closes every executor's channel and waits for the executors to finish.
    pub(crate) fn shutdown(self) {
        for executor in self.executors {
            drop(executor.sender);
            let _ = executor.thread.join();
        }
    }
}

/// Only a dead executor refuses a batch; its requests learn it from the error.
fn fail_undeliverable(batch: Batch) {
    for row in batch.rows {
        row.request
            .fail(EmbedError::Device("executor thread stopped".into()));
    }
}

struct Executor {
    queued_tokens: Arc<AtomicUsize>,
    counters: Arc<Counters>,
    queue: Arc<RequestQueue>,
    index: usize,
}

type Loaded = SyncSender<Result<(), EmbedError>>;

impl Executor {
    fn run(self, mut spec: ReplicaSpec, batches: Receiver<Batch>, loaded: Loaded) {
        let _no_grad = tch::no_grad_guard();
        if let Some(threads) = spec.threads {
            // libtorch sets a thread's OpenMP thread count on its first parallel op from
            // the process-wide value; take that step first so the count set here stays
            // this thread's own (the engine restores the process-wide value afterwards).
            let _ = tch::get_num_threads();
            tch::set_num_threads(threads);
        }
        let replica = match Replica::load(&mut spec) {
            Ok(replica) => replica,
            Err(err) => {
                let _ = loaded.send(Err(err));
                return;
            }
        };
        let _ = loaded.send(Ok(()));
        for batch in batches {
            self.execute(&replica, batch);
        }
    }

    fn execute(&self, replica: &Replica, batch: Batch) {
        let started = Instant::now();
        let tokens = batch.padded_tokens();
        let result = replica.embed_splitting_on_oom(&batch.rows, &self.counters);
        // Counters first: a caller that reads stats after its answer must see its batch.
        self.counters.record_batch(&BatchRecord {
            device: self.index,
            rows: batch.rows.len(),
            real_tokens: batch.rows.iter().map(|r| r.ids.len()).sum(),
            padded_tokens: tokens,
            busy: started.elapsed(),
        });
        self.queued_tokens.fetch_sub(tokens, Relaxed);
        self.queue.executor_freed();
        match result {
            Ok(vectors) => {
                for (row, vector) in batch.rows.iter().zip(vectors) {
                    row.request.deliver(row.index, vector);
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, rows = batch.rows.len(), "embedding batch failed");
                for row in &batch.rows {
                    row.request.fail(EmbedError::Inference(err.to_string()));
                }
            }
        }
    }
}

/// One model replica on one device.
struct Replica {
    encoder: BertEncoder,
    device: Device,
    pooling: Pooling,
    normalize: bool,
}

impl Replica {
    fn load(spec: &mut ReplicaSpec) -> Result<Replica, EmbedError> {
        let encoder = match spec.shared.take() {
            Some(encoder) => encoder,
            None => BertEncoder::load(&spec.weights, &spec.model.bert, spec.device, spec.kind)?,
        };
        Ok(Replica {
            encoder,
            device: spec.device,
            pooling: spec.model.head.pooling,
            normalize: spec.model.head.normalize,
        })
    }

    /// Embeds `rows`; when the device runs out of memory the rows are halved and each half
    /// retried, down to single rows, so a burst of long inputs slows down instead of failing.
    /// On a GPU, libtorch's cached blocks are released before the retry.
    fn embed_splitting_on_oom(
        &self,
        rows: &[Row],
        counters: &Counters,
    ) -> Result<Vec<Vec<f32>>, TchError> {
        match self.embed(rows) {
            Err(err) if rows.len() > 1 && is_out_of_memory(&err) => {
                counters.record_oom_split();
                tracing::warn!(rows = rows.len(), "device out of memory, splitting batch");
                if self.device.is_cuda() {
                    // The failed batch's freed activations sit in libtorch's cache in
                    // blocks sized for it; hand them back so the halves (and the search
                    // index on the same GPU) can allocate afresh instead of fragmenting.
                    crate::cuda_alloc::empty_cache();
                }
                let (first, second) = rows.split_at(rows.len() / 2);
                let mut vectors = self.embed_splitting_on_oom(first, counters)?;
                vectors.extend(self.embed_splitting_on_oom(second, counters)?);
                Ok(vectors)
            }
            result => result,
        }
    }

    fn embed(&self, rows: &[Row]) -> Result<Vec<Vec<f32>>, TchError> {
        let ids: Vec<&[i64]> = rows.iter().map(|r| r.ids.as_slice()).collect();
        let batch = PackedBatch::new(&ids, self.device)?;
        let hidden = self.encoder.forward(&batch)?;
        let mut pooled = pool(&hidden, &batch, self.pooling)?;
        if self.normalize {
            pooled = l2_normalize(&pooled)?;
        }
        let pooled = pooled.f_to_device(Device::Cpu)?;
        let dim = pooled.size()[1] as usize;
        let mut flat = vec![0f32; rows.len() * dim];
        pooled.f_copy_data(&mut flat, rows.len() * dim)?;
        Ok(flat.chunks_exact(dim).map(<[f32]>::to_vec).collect())
    }
}

/// Whether `err` is a failed allocation, which a smaller batch may avoid: the caching
/// allocator's "CUDA out of memory", a library's workspace allocation failing inside a
/// kernel call (cuBLAS, cuDNN), or the CPU allocator refusing.
pub(crate) fn is_out_of_memory(err: &TchError) -> bool {
    const MARKERS: [&str; 5] = [
        "out of memory",
        "CUBLAS_STATUS_ALLOC_FAILED",
        "CUDNN_STATUS_ALLOC_FAILED",
        "can't allocate memory",
        "not enough memory",
    ];
    let text = err.to_string();
    MARKERS.iter().any(|m| text.contains(m))
}

#[cfg(test)]
mod tests {
    use super::is_out_of_memory;
    use tch::TchError;

    #[test]
    fn allocation_failures_of_every_layer_count_as_out_of_memory() {
        for text in [
            "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.10 GiB total capacity)",
            "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
            "cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
            "[enforce fail at alloc_cpu.cpp:117] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to allocate 123 bytes",
        ] {
            assert!(is_out_of_memory(&TchError::Torch(text.into())), "{text}");
        }
        assert!(!is_out_of_memory(&TchError::Torch(
            "CUDA error: an illegal memory access was encountered".into()
        )));
    }

    #[test]
    fn a_real_cpu_allocation_failure_is_recognised() {
        // Ask libtorch's CPU allocator for far more than any machine has.
        let Err(err) = tch::Tensor::f_zeros([1i64 << 50], (tch::Kind::Float, tch::Device::Cpu))
        else {
            panic!("a 4 PiB tensor was allocated");
        };
        assert!(is_out_of_memory(&err), "{err}");
    }
}
