//! Query batching: concurrent searches of one collection with the same filter run as one
//! matrix product.
//!
//! Exact search streams the whole matrix of a collection for every call, so on CPU one call
//! for 64 queries costs little more than one call for a single query. The first query to
//! arrive for a (collection, filter) runs at once; queries that arrive while it runs wait
//! in a queue and the next run takes all of them (up to `MAX_BATCH`). An idle worker adds
//! no latency; a loaded one answers many queries per pass over the data.

use crate::index::filter::Filter;
use crate::index::flat::Hit;
use crate::index::IndexError;
use crate::log::Seq;
use crate::store::Store;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::oneshot;

/// Most queries in one matrix product.
pub const MAX_BATCH: usize = 256;

/// Rows of a collection from which a CPU search run uses every core (whatever the batch:
/// under load the batcher alternates runs of one query with runs of the rest).
pub const PARALLEL_ROWS: usize = 1 << 14;

/// The answer to one query and the state it was computed on.
#[derive(Debug, Clone)]
pub struct Answer {
    pub hits: Vec<Hit>,
    /// The index's applied sequence during the search.
    pub applied: Seq,
    /// The collection's version during the search (see [`crate::index::Index::version`]).
    pub version: Seq,
}

type Reply = oneshot::Sender<Result<Answer, Arc<IndexError>>>;

struct Pending {
    vector: Vec<f32>,
    top_k: usize,
    reply: Reply,
}

struct Queue {
    pending: Vec<Pending>,
}

/// Groups concurrent searches per (collection, filter).
pub struct SearchBatcher {
    store: Arc<Store>,
    /// libtorch threads of a large search run (0: leave the thread's count alone).
    threads: i32,
    /// libtorch threads of a small one: the process-wide count when the batcher was made.
    base: i32,
    /// A key is present while a run for it is in flight; its queue holds the next batch.
    queues: Mutex<HashMap<(String, String), Queue>>,
}

impl SearchBatcher {
    pub fn new(store: Arc<Store>) -> Arc<Self> {
        Self::with_threads(store, 0)
    }

    /// A batcher whose runs over collections of at least [`PARALLEL_ROWS`] rows use
    /// `threads` libtorch threads, and the others the process-wide count at this call.
    ///
    /// The embedding engine sets the process-wide count to its CPU executors' share of the
    /// cores (one each with the default two executors on two cores). That made every CPU
    /// search single-threaded: 16 clients of vector queries over 100k rows got 213 QPS
    /// instead of ~700. Giving every search all the cores instead cost text queries over a
    /// 1,000-passage collection about 20% (the searches' threads compete with the
    /// executors' for work too small to share). Only large collections get every core:
    /// counting rows x queries instead left the runs of a single query, half of the runs
    /// under load, on one thread (100k rows: 323-410 QPS instead of ~700).
    pub fn with_threads(store: Arc<Store>, threads: usize) -> Arc<Self> {
        Arc::new(Self {
            store,
            threads: i32::try_from(threads).unwrap_or(i32::MAX),
            base: tch::get_num_threads(),
            queues: Mutex::new(HashMap::new()),
        })
    }

    /// Sets this thread's libtorch thread count for a run over `rows` rows.
    fn use_threads(&self, rows: usize) {
        let want = if rows >= PARALLEL_ROWS {
            self.threads
        } else {
            self.base
        };
        // Reading the count first initialises this thread's from the process-wide one,
        // so that the count set here stays this thread's own.
        if want > 0 && tch::get_num_threads() != want {
            tch::set_num_threads(want);
        }
    }

    /// Searches `collection` for the `top_k` best rows that pass `filter`; `filter_key` is
    /// the filter's canonical text (equal filters, equal keys). The vector must have the
    /// collection's dimension.
    pub async fn search(
        self: &Arc<Self>,
        collection: &str,
        filter_key: String,
        filter: Filter,
        vector: Vec<f32>,
        top_k: usize,
    ) -> Result<Answer, Arc<IndexError>> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            vector,
            top_k,
            reply,
        };
        let key = (collection.to_string(), filter_key);
        let start = {
            let mut queues = self.queues.lock();
            match queues.get_mut(&key) {
                Some(queue) => {
                    queue.pending.push(pending);
                    None
                }
                None => {
                    queues.insert(
                        key.clone(),
                        Queue {
                            pending: Vec::new(),
                        },
                    );
                    Some(pending)
                }
            }
        };
        if let Some(first) = start {
            let batcher = self.clone();
            tokio::task::spawn_blocking(move || batcher.drain(key, filter, vec![first]));
        }
        answer.await.unwrap_or_else(|_| {
            Err(Arc::new(IndexError::Aborted(
                "the search task ended without an answer".into(),
            )))
        })
    }

    /// Runs `batch`, then whatever queued meanwhile, until the queue is empty. A panic in
    /// a search fails the queries waiting for that key instead of leaving the key stuck.
    fn drain(&self, key: (String, String), filter: Filter, mut batch: Vec<Pending>) {
        loop {
            let run = std::panic::AssertUnwindSafe(|| self.run(&key.0, &filter, batch));
            let ok = std::panic::catch_unwind(run).is_ok();
            let mut queues = self.queues.lock();
            if !ok {
                tracing::error!(collection = key.0, "search panicked; failing its queue");
                // Dropping the pending replies answers their waiters with an error.
                queues.remove(&key);
                return;
            }
            let queue = queues.get_mut(&key).expect("a running key has a queue");
            if queue.pending.is_empty() {
                queues.remove(&key);
                return;
            }
            let take = queue.pending.len().min(MAX_BATCH);
            batch = queue.pending.drain(..take).collect();
        }
    }

    fn run(&self, collection: &str, filter: &Filter, mut batch: Vec<Pending>) {
        // Callers whose request ended (deadline, disconnect) no longer wait: skip them, and
        // stop the search if all of them go while it runs.
        batch.retain(|p| !p.reply.is_closed());
        if batch.is_empty() {
            return;
        }
        let index = self.store.index();
        let k = batch.iter().map(|p| p.top_k).max().unwrap_or(1);
        let result = match index.get(collection) {
            None => Err(IndexError::NoSuchCollection(collection.to_string())),
            Some(c) => {
                if self.threads > 0 {
                    self.use_threads(c.stats().chunks);
                }
                let vectors: Vec<Vec<f32>> = batch.iter().map(|p| p.vector.clone()).collect();
                let abandoned = || batch.iter().all(|p| p.reply.is_closed());
                c.search_cancellable(&vectors, k, filter, &abandoned)
            }
        };
        let (applied, version) = (index.applied(), index.version(collection));
        drop(index);
        match result {
            Ok(all) => {
                for (p, mut hits) in batch.into_iter().zip(all) {
                    hits.truncate(p.top_k);
                    let _ = p.reply.send(Ok(Answer {
                        hits,
                        applied,
                        version,
                    }));
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                for p in batch {
                    let _ = p.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{ChunkRecord, Metric, Op};
    use rand::{Rng, SeedableRng};
    use serde_json::json;

    fn store_with(rows: usize, dim: usize) -> (tempfile::TempDir, Arc<Store>) {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = kb_config::WorkerConfig::default();
        let (store, _) = Store::open(tmp.path(), &cfg, tch::Device::Cpu).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut ops = vec![Op::CreateCollection {
            collection: "c".into(),
            dim,
            metric: Metric::Cosine,
        }];
        for i in 0..rows {
            ops.push(Op::Upsert {
                collection: "c".into(),
                doc_id: format!("d{i}"),
                chunks: vec![ChunkRecord {
                    chunk_id: format!("d{i}#0"),
                    text: String::new(),
                    metadata: json!({"even": i % 2 == 0}).as_object().unwrap().clone(),
                    vector: (0..dim).map(|_| rng.gen_range(-1.0f32..1.0)).collect(),
                }],
            });
        }
        store.write(ops).unwrap();
        (tmp, Arc::new(store))
    }

    #[test]
    fn runs_over_large_collections_get_every_core_and_small_ones_the_base_count() {
        let (_tmp, store) = store_with(10, 4);
        // A thread of its own: the count is per thread once initialised.
        std::thread::spawn(move || {
            let more = tch::get_num_threads() + 1;
            let batcher = SearchBatcher::with_threads(store, more as usize);
            let base = batcher.base;
            assert_ne!(base, more);
            batcher.use_threads(PARALLEL_ROWS);
            assert_eq!(tch::get_num_threads(), more);
            batcher.use_threads(PARALLEL_ROWS - 1);
            assert_eq!(tch::get_num_threads(), base);
        })
        .join()
        .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_queries_get_the_answers_of_single_searches() {
        let (_tmp, store) = store_with(500, 16);
        let batcher = SearchBatcher::new(store.clone());
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let even = Filter::parse(&json!({"even": true})).unwrap();
        let cases: Vec<(Vec<f32>, usize, Filter, String)> = (0..64)
            .map(|i| {
                let v: Vec<f32> = (0..16).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
                let (f, key) = if i % 3 == 0 {
                    (even.clone(), "even".to_string())
                } else {
                    (Filter::default(), String::new())
                };
                (v, 1 + i % 7, f, key)
            })
            .collect();
        let tasks: Vec<_> = cases
            .iter()
            .cloned()
            .map(|(v, k, f, key)| {
                let b = batcher.clone();
                tokio::spawn(async move { b.search("c", key, f, v, k).await.unwrap() })
            })
            .collect();
        for ((v, k, f, _), task) in cases.iter().zip(tasks) {
            let answer = task.await.unwrap();
            let index = store.index();
            let alone = index
                .get("c")
                .unwrap()
                .search(std::slice::from_ref(v), *k, f)
                .unwrap();
            let ids = |hits: &[Hit]| {
                hits.iter()
                    .map(|h| h.row.doc_id.clone())
                    .collect::<Vec<_>>()
            };
            assert_eq!(ids(&answer.hits), ids(&alone[0]));
            assert_eq!(answer.hits.len(), *k);
            assert_eq!(answer.version, index.version("c"));
        }
        // The last run answers its waiters before it takes the lock to retire its key, so
        // the key may still be there for a moment after the last answer arrives.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !batcher.queues.lock().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "no queue left behind: {:?}",
                batcher.queues.lock().keys().collect::<Vec<_>>()
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_missing_collection_fails_every_waiter() {
        let (_tmp, store) = store_with(3, 4);
        let batcher = SearchBatcher::new(store);
        let err = batcher
            .search("nope", String::new(), Filter::default(), vec![1.0; 4], 1)
            .await
            .unwrap_err();
        assert!(matches!(*err, IndexError::NoSuchCollection(_)));
    }
}
