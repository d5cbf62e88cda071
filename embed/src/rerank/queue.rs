//! The reranker's executors and the one bounded queue they all take from. An idle
//! executor takes the oldest request, and with it the requests waiting behind it up to a
//! round of `batch_tokens` per executor; it tokenizes them, sorts all their pairs by
//! length (less padding), cuts them into batches of at most `batch_tokens` padded tokens
//! (at least one per executor when there are that many pairs, so that a lone request
//! runs on every executor), runs the first batch and leaves the rest to whichever
//! executor is free. Each request is answered, its logits in its own order, when its last
//! pair is scored.

use super::scorer::Scorer;
use super::{tokenize, JobResult, Pair};
use crate::batcher::plan_batches;
use crate::EmbedError;
use std::collections::VecDeque;
use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use tokenizers::Tokenizer;
use tokio::sync::oneshot;

/// One request: a query and its passages.
pub(super) struct Job {
    pub(super) query: String,
    pub(super) passages: Vec<String>,
    pub(super) reply: oneshot::Sender<JobResult>,
}

/// A request being scored: its pairs' logits as their batches finish.
struct Pending {
    state: Mutex<PendingState>,
}

struct PendingState {
    /// `None` once answered (or failed).
    reply: Option<oneshot::Sender<JobResult>>,
    logits: Vec<(f32, bool)>,
    remaining: usize,
}

impl Pending {
    fn new(reply: oneshot::Sender<JobResult>, pairs: usize) -> Pending {
        Pending {
            state: Mutex::new(PendingState {
                reply: Some(reply),
                logits: vec![(0.0, false); pairs],
                remaining: pairs,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, PendingState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Answered already, failed, or its caller left: its pairs need not run.
    fn settled(&self) -> bool {
        self.lock().reply.as_ref().is_none_or(|r| r.is_closed())
    }

    fn record(&self, index: usize, logit: f32, truncated: bool) {
        let mut state = self.lock();
        if state.reply.is_none() {
            return;
        }
        state.logits[index] = (logit, truncated);
        state.remaining -= 1;
        if state.remaining == 0 {
            let logits = std::mem::take(&mut state.logits);
            if let Some(reply) = state.reply.take() {
                let _ = reply.send(Ok(logits));
            }
        }
    }

    fn fail(&self, err: EmbedError) {
        if let Some(reply) = self.lock().reply.take() {
            let _ = reply.send(Err(err));
        }
    }
}

/// One pair of a request, in a batch.
struct Row {
    job: Arc<Pending>,
    index: usize,
    pair: Pair,
}

/// What an executor takes next.
enum Work {
    /// Batches left by another executor's round.
    Batch(Vec<Row>),
    /// A request to start a round with.
    Job(Job),
}

struct State {
    jobs: VecDeque<Job>,
    batches: VecDeque<Vec<Row>>,
    closed: bool,
}

/// The requests waiting (at most `capacity`) and the batches prepared.
pub(super) struct Queue {
    state: Mutex<State>,
    wake: Condvar,
    capacity: usize,
}

impl Queue {
    pub(super) fn new(capacity: usize) -> Queue {
        Queue {
            state: Mutex::new(State {
                jobs: VecDeque::new(),
                batches: VecDeque::new(),
                closed: false,
            }),
            wake: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `job`; `QueueFull` when `capacity` requests wait already.
    pub(super) fn submit(&self, job: Job) -> Result<(), EmbedError> {
        let mut state = self.lock();
        if state.closed {
            return Err(EmbedError::ShuttingDown);
        }
        if state.jobs.len() >= self.capacity {
            return Err(EmbedError::QueueFull {
                retry_after_ms: 100,
            });
        }
        state.jobs.push_back(job);
        drop(state);
        self.wake.notify_one();
        Ok(())
    }

    /// Refuses new requests; executors stop once the queued ones are answered.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_all();
    }

    /// The next work, waiting for some; `None` once closed and drained.
    fn next(&self) -> Option<Work> {
        let mut state = self.lock();
        loop {
            if let Some(batch) = state.batches.pop_front() {
                return Some(Work::Batch(batch));
            }
            if let Some(job) = state.jobs.pop_front() {
                return Some(Work::Job(job));
            }
            if state.closed {
                return None;
            }
            state = self.wake.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn take_job(&self) -> Option<Job> {
        self.lock().jobs.pop_front()
    }

    fn push_batches(&self, batches: impl Iterator<Item = Vec<Row>>) {
        let mut state = self.lock();
        let before = state.batches.len();
        state.batches.extend(batches);
        let added = state.batches.len() - before;
        drop(state);
        for _ in 0..added {
            self.wake.notify_one();
        }
    }
}

/// How rounds are cut into batches.
#[derive(Debug, Clone, Copy)]
pub(super) struct Plan {
    /// Padded tokens of one batch at most.
    pub(super) batch_tokens: usize,
    /// Executors taking from the queue.
    pub(super) executors: usize,
    /// Tokens a pair is cut to.
    pub(super) max_seq_len: usize,
}

/// An executor's loop: rounds and batches until the queue closes.
pub(super) fn serve(queue: &Queue, scorer: &Scorer, tokenizer: &Tokenizer, plan: Plan) {
    while let Some(work) = queue.next() {
        let batch = match work {
            Work::Batch(batch) => batch,
            Work::Job(job) => {
                let mut rows = gather(queue, tokenizer, job, plan);
                rows.sort_by_key(|row| row.pair.ids.len());
                let lengths: Vec<usize> = rows.iter().map(|row| row.pair.ids.len()).collect();
                let mut rows = rows.into_iter();
                let mut batches = cut(&lengths, plan.batch_tokens, plan.executors)
                    .into_iter()
                    .map(|range| rows.by_ref().take(range.len()).collect::<Vec<Row>>());
                let Some(first) = batches.next() else {
                    continue;
                };
                queue.push_batches(batches);
                first
            }
        };
        run(scorer, batch);
    }
}

/// The pairs of `first` and of the requests queued behind it, up to a round of
/// `batch_tokens` per executor. A request that fails to tokenize is answered at once.
fn gather(queue: &Queue, tokenizer: &Tokenizer, first: Job, plan: Plan) -> Vec<Row> {
    let round = plan.batch_tokens.saturating_mul(plan.executors);
    let mut rows = Vec::new();
    let mut tokens = 0;
    let mut next = Some(first);
    while let Some(job) = next {
        if !job.reply.is_closed() {
            match tokenize(tokenizer, &job.query, &job.passages, plan.max_seq_len) {
                Ok(pairs) => {
                    tokens += pairs.iter().map(|p| p.ids.len()).sum::<usize>();
                    let pending = Arc::new(Pending::new(job.reply, pairs.len()));
                    rows.extend(pairs.into_iter().enumerate().map(|(index, pair)| Row {
                        job: Arc::clone(&pending),
                        index,
                        pair,
                    }));
                }
                Err(err) => {
                    let _ = job.reply.send(Err(err));
                }
            }
        }
        next = if tokens < round {
            queue.take_job()
        } else {
            None
        };
    }
    rows
}

/// Cuts rows sorted by ascending length into batches within `budget` padded tokens
/// ([`plan_batches`]); while there are fewer batches than `executors`, the costliest is
/// halved (by tokens), so every executor gets a share of a lone request.
fn cut(sorted_lengths: &[usize], budget: usize, executors: usize) -> Vec<Range<usize>> {
    let mut batches = plan_batches(sorted_lengths, budget);
    let padded =
        |r: &Range<usize>| r.len() * r.clone().map(|i| sorted_lengths[i]).max().unwrap_or(0);
    while batches.len() < executors {
        let Some((at, widest)) = batches
            .iter()
            .enumerate()
            .filter(|(_, r)| r.len() > 1)
            .max_by_key(|(_, r)| padded(r))
            .map(|(i, r)| (i, r.clone()))
        else {
            break;
        };
        let half: usize = widest.clone().map(|i| sorted_lengths[i]).sum::<usize>() / 2;
        let mut sum = 0;
        let mut split = widest.start + 1;
        for i in widest.clone() {
            sum += sorted_lengths[i];
            if sum >= half {
                split = (i + 1).clamp(widest.start + 1, widest.end - 1);
                break;
            }
        }
        batches.splice(at..=at, [widest.start..split, split..widest.end]);
    }
    batches
}

/// Runs one batch and hands every row's logit to its request; the rows of requests
/// already settled are skipped.
fn run(scorer: &Scorer, mut batch: Vec<Row>) {
    batch.retain(|row| !row.job.settled());
    if batch.is_empty() {
        return;
    }
    let pairs: Vec<&Pair> = batch.iter().map(|row| &row.pair).collect();
    match scorer.logits_splitting_on_oom(&pairs) {
        Ok(logits) => {
            for (row, logit) in batch.iter().zip(logits) {
                row.job.record(row.index, logit, row.pair.truncated);
            }
        }
        Err(err) => {
            for row in &batch {
                row.job.fail(EmbedError::Inference(err.to_string()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::single_range_in_vec_init)]
    fn a_lone_request_is_spread_over_the_executors_and_the_budget_holds() {
        // 50 pairs of 100 tokens, a budget of 16384: one batch, halved for two executors.
        let lengths = vec![100; 50];
        assert_eq!(cut(&lengths, 16_384, 1), [0..50]);
        assert_eq!(cut(&lengths, 16_384, 2), [0..25, 25..50]);
        assert_eq!(cut(&lengths, 16_384, 4).len(), 4);
        // The budget cuts first: 2000 tokens hold 20 rows.
        assert_eq!(cut(&lengths, 2_000, 2), [0..20, 20..40, 40..50]);
        // One pair cannot be split.
        assert_eq!(cut(&[7], 16_384, 4), [0..1]);
        // Halved by tokens: the long rows get fewer companions.
        let mixed = [10, 10, 10, 10, 10, 10, 60];
        assert_eq!(cut(&mixed, 1_000, 2), [0..6, 6..7]);
    }

    #[test]
    fn the_queue_is_bounded_and_drains_after_closing() {
        let queue = Queue::new(2);
        let job = || {
            let (reply, _answer) = oneshot::channel();
            Job {
                query: "q".into(),
                passages: vec!["p".into()],
                reply,
            }
        };
        queue.submit(job()).unwrap();
        queue.submit(job()).unwrap();
        assert!(matches!(
            queue.submit(job()),
            Err(EmbedError::QueueFull { .. })
        ));
        queue.close();
        assert!(matches!(queue.submit(job()), Err(EmbedError::ShuttingDown)));
        assert!(matches!(queue.next(), Some(Work::Job(_))));
        assert!(matches!(queue.next(), Some(Work::Job(_))));
        assert!(queue.next().is_none());
    }
}
