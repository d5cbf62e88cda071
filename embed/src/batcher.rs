//! The bounded request queue and the scheduler that turns requests into batches.
//!
//! Callers enqueue whole requests (admission control counts texts). One scheduler thread
//! takes everything queued at once (a "round"), tokenizes it, sorts the rows by length so
//! that rows of similar length share a batch (less padding), cuts the sorted rows into
//! batches under the token budget and hands each batch to the least-loaded executor. While
//! the executors are busy new requests pile up in the queue, so rounds, and therefore
//! batches, grow with load.

use crate::executor::{Batch, Dispatcher};
use crate::request::{PendingRequest, Reply, Row};
use crate::stats::Counters;
use crate::tokenize::TextTokenizer;
use crate::EmbedError;
use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Condvar, Mutex};

struct QueuedRequest {
    texts: Vec<String>,
    request: Arc<PendingRequest>,
}

struct QueueState {
    requests: VecDeque<QueuedRequest>,
    closed: bool,
}

/// The bounded queue between callers and the scheduler.
pub(crate) struct RequestQueue {
    state: Mutex<QueueState>,
    wake: Condvar,
    capacity: usize,
    counters: Arc<Counters>,
}

impl RequestQueue {
    pub(crate) fn new(capacity: usize, counters: Arc<Counters>) -> RequestQueue {
        RequestQueue {
            state: Mutex::new(QueueState {
                requests: VecDeque::new(),
                closed: false,
            }),
            wake: Condvar::new(),
            capacity,
            counters,
        }
    }

    /// Admits `texts` if the queue has room for them. A request larger than the whole
    /// capacity is still admitted when nothing else is pending, so that it can never be
    /// refused forever.
    pub(crate) fn submit(&self, texts: Vec<String>, reply: Reply) -> Result<(), EmbedError> {
        if texts.is_empty() {
            return Err(EmbedError::EmptyInput);
        }
        let mut state = self.lock();
        if state.closed {
            return Err(EmbedError::ShuttingDown);
        }
        let depth = self.counters.queue_depth.load(Relaxed);
        if depth > 0 && depth + texts.len() > self.capacity {
            return Err(EmbedError::QueueFull {
                retry_after_ms: self.counters.retry_after_ms(),
            });
        }
        self.counters.queue_depth.fetch_add(texts.len(), Relaxed);
        let request = Arc::new(PendingRequest::new(
            texts.len(),
            reply,
            Arc::clone(&self.counters),
        ));
        state.requests.push_back(QueuedRequest { texts, request });
        self.wake.notify_one();
        Ok(())
    }

    /// Waits for work and takes all of it; `None` once closed. Requests still queued at
    /// close are dropped, which answers them `ShuttingDown`.
    fn next_round(&self) -> Option<Vec<QueuedRequest>> {
        let mut state = self.lock();
        loop {
            if state.closed {
                state.requests.clear();
                return None;
            }
            if !state.requests.is_empty() {
                return Some(state.requests.drain(..).collect());
            }
            state = self.wake.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Refuses new requests and stops the scheduler after its current round.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_all();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The scheduler thread's body: rounds until the queue closes, then stops the executors.
pub(crate) fn run_scheduler(
    queue: Arc<RequestQueue>,
    tokenizer: TextTokenizer,
    dispatcher: Dispatcher,
    max_batch_tokens: usize,
) {
    while let Some(round) = queue.next_round() {
        let mut rows = tokenize_round(&tokenizer, round);
        rows.sort_by_key(|row| row.ids.len());
        let lengths: Vec<usize> = rows.iter().map(|row| row.ids.len()).collect();
        let mut rows = rows.into_iter();
        for range in plan_batches(&lengths, max_batch_tokens) {
            let batch: Vec<Row> = rows.by_ref().take(range.len()).collect();
            dispatcher.dispatch(Batch::new(batch));
        }
    }
    dispatcher.shutdown();
}

/// Tokenizes each request of a round (a request's texts in parallel); a request the
/// tokenizer rejects is answered with the error and contributes no rows.
fn tokenize_round(tokenizer: &TextTokenizer, round: Vec<QueuedRequest>) -> Vec<Row> {
    let mut rows = Vec::new();
    for queued in round {
        match tokenizer.encode(&queued.texts) {
            Ok(tokenized) => rows.extend(queued.request.rows(tokenized)),
            Err(err) => queued.request.fail(err),
        }
    }
    rows
}

/// Cuts rows sorted by ascending length into consecutive batches whose padded size
/// (rows x longest row) stays within `budget` tokens. A row longer than the budget on its
/// own still gets a batch of one.
pub(crate) fn plan_batches(sorted_lengths: &[usize], budget: usize) -> Vec<Range<usize>> {
    let mut batches = Vec::new();
    let mut start = 0;
    for (i, &len) in sorted_lengths.iter().enumerate() {
        let rows_if_added = i - start + 1;
        if i > start && len * rows_if_added > budget {
            batches.push(start..i);
            start = i;
        }
    }
    if start < sorted_lengths.len() {
        batches.push(start..sorted_lengths.len());
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_respect_the_padded_token_budget() {
        let lengths = [2, 3, 3, 4, 10, 10, 10];
        let batches = plan_batches(&lengths, 12);
        assert_eq!(batches, vec![0..3, 3..4, 4..5, 5..6, 6..7]);
        for range in &batches {
            let padded = lengths[range.end - 1] * range.len();
            assert!(padded <= 12 || range.len() == 1);
        }
    }

    #[test]
    fn a_row_longer_than_the_budget_gets_its_own_batch() {
        assert_eq!(plan_batches(&[5, 300], 256), vec![0..1, 1..2]);
        assert_eq!(plan_batches(&[], 256), Vec::<Range<usize>>::new());
    }

    #[test]
    fn oversized_request_is_admitted_only_into_an_idle_queue() {
        let counters = Arc::new(Counters::new(vec!["cpu".into()]));
        let queue = RequestQueue::new(2, Arc::clone(&counters));
        let texts = |n: usize| vec!["x".to_string(); n];
        let (tx, _rx1) = tokio::sync::oneshot::channel();
        queue.submit(texts(5), tx).unwrap();
        let (tx, _rx2) = tokio::sync::oneshot::channel();
        let err = queue.submit(texts(1), tx).unwrap_err();
        assert!(matches!(err, EmbedError::QueueFull { .. }), "{err}");
        let (tx, _rx3) = tokio::sync::oneshot::channel();
        assert_eq!(queue.submit(Vec::new(), tx), Err(EmbedError::EmptyInput));
    }

    #[test]
    fn closing_answers_queued_requests_with_shutting_down() {
        let counters = Arc::new(Counters::new(vec!["cpu".into()]));
        let queue = RequestQueue::new(8, Arc::clone(&counters));
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        queue.submit(vec!["a".into()], tx).unwrap();
        queue.close();
        assert!(queue.next_round().is_none());
        assert_eq!(rx.try_recv().unwrap(), Err(EmbedError::ShuttingDown));
        assert_eq!(counters.queue_depth.load(Relaxed), 0);
    }
}
