//! The two-lane request queue and the scheduler that turns requests into batches.
//!
//! Callers enqueue whole requests into one of two lanes (admission control counts texts
//! per lane, so a full bulk lane never refuses a query):
//!
//! - **interactive** (queries, small `/v1/embeddings` calls): as soon as an executor is
//!   idle (or a full round of [`FULL_ROUND_TEXTS`] waits), the scheduler takes everything
//!   queued here at once (a "round"), tokenizes it, sorts the rows by length, cuts them
//!   into batches under the interactive token budget and hands them to the least-loaded
//!   executor. While the executors are busy, new requests pile up, so rounds, and
//!   therefore batches, grow with load: an idle worker adds no latency, a loaded one
//!   embeds its queries in few large batches instead of many small ones.
//! - **bulk** (ingestion, large `/v1/embeddings` calls): served only when no interactive
//!   request waits and an executor is idle, one batch of at most the bulk token budget at a
//!   time. Large requests are taken a window of texts at a time (round-robin between bulk
//!   requests), so a 20,000-passage ingest is never tokenized in one go and an interactive
//!   request waits at most for the one bulk batch that is running.

use crate::executor::{Batch, Dispatcher};
use crate::request::{PendingRequest, Reply, Row};
use crate::stats::Counters;
use crate::tokenize::{TextTokenizer, TokenizedText};
use crate::EmbedError;
use std::collections::VecDeque;
use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Which queue a request waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Latency-bound work (queries, a few texts): always scheduled ahead of bulk work.
    Interactive,
    /// Throughput-bound work (ingestion): fills the devices whenever no interactive
    /// request waits, in bounded batches.
    Bulk,
}

impl Lane {
    /// Both lanes, interactive first.
    pub const ALL: [Lane; 2] = [Lane::Interactive, Lane::Bulk];

    /// `interactive` or `bulk`, for metric labels and logs.
    pub fn name(self) -> &'static str {
        match self {
            Lane::Interactive => "interactive",
            Lane::Bulk => "bulk",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Lane::Interactive => 0,
            Lane::Bulk => 1,
        }
    }
}

/// What a request asks to embed: texts, or token ids already wrapped in the model's
/// special tokens and truncated.
pub(crate) enum Inputs {
    Texts(VecDeque<String>),
    Tokens(VecDeque<TokenizedText>),
}

impl Inputs {
    fn len(&self) -> usize {
        match self {
            Inputs::Texts(t) => t.len(),
            Inputs::Tokens(t) => t.len(),
        }
    }

    /// Removes and returns the first `n` inputs.
    fn take_front(&mut self, n: usize) -> Inputs {
        match self {
            Inputs::Texts(t) => Inputs::Texts(t.drain(..n.min(t.len())).collect()),
            Inputs::Tokens(t) => Inputs::Tokens(t.drain(..n.min(t.len())).collect()),
        }
    }

    fn tokenize(self, tokenizer: &TextTokenizer) -> Result<Vec<TokenizedText>, EmbedError> {
        match self {
            Inputs::Texts(texts) => tokenizer.encode(Vec::from(texts).as_slice()),
            Inputs::Tokens(tokens) => Ok(tokens.into()),
        }
    }
}

struct QueuedRequest {
    inputs: Inputs,
    /// Index (in the caller's input order) of `inputs`' first element.
    offset: usize,
    request: Arc<PendingRequest>,
}

/// A part of a request taken off the queue, to be tokenized outside the lock.
struct Part {
    inputs: Inputs,
    offset: usize,
    request: Arc<PendingRequest>,
}

impl Part {
    /// Tokenizes the part into rows; a part the tokenizer rejects fails its request.
    fn into_rows(self, tokenizer: &TextTokenizer) -> Vec<Row> {
        if self.request.is_settled() {
            return Vec::new();
        }
        match self.inputs.tokenize(tokenizer) {
            Ok(tokenized) => self.request.rows(self.offset, tokenized),
            Err(err) => {
                self.request.fail(err);
                Vec::new()
            }
        }
    }
}

struct QueueState {
    lanes: [VecDeque<QueuedRequest>; 2],
    closed: bool,
    /// Set by an executor that finished a batch, so the scheduler looks again.
    executor_freed: bool,
    /// When bulk work was last handed out (or the bulk lane last became non-empty).
    bulk_served_at: Instant,
    /// When an interactive request last arrived.
    interactive_seen_at: Option<Instant>,
}

impl QueueState {
    /// `reserve` while interactive requests arrived within [`INTERACTIVE_RECENT`], else 0.
    fn reserved(&self, reserve: usize) -> usize {
        let recent = self
            .interactive_seen_at
            .is_some_and(|t| t.elapsed() < INTERACTIVE_RECENT);
        if recent {
            reserve
        } else {
            0
        }
    }
}

/// While interactive requests arrived this recently, bulk work leaves executors free for
/// them (see [`RequestQueue::next_work_reserving`]).
const INTERACTIVE_RECENT: Duration = Duration::from_millis(500);

/// Interactive texts that make a round worth forming while every executor is busy: about
/// one batch at the default token budget (16,384 tokens of 64-token queries). Fewer wait
/// for an idle executor and join a larger round; forming rounds early made them small
/// (four texts per batch on average at 16 concurrent clients on 2 CPU cores, eight now).
const FULL_ROUND_TEXTS: usize = 256;

/// The longest bulk work waits while interactive work keeps every device busy: after
/// this, one bulk batch goes ahead of the queries, so a sustained query load slows an
/// ingest down (to one batch a second) but never stops it.
const BULK_MAX_WAIT: Duration = Duration::from_secs(1);

/// What the scheduler should do next.
enum Work {
    Interactive(Vec<Part>),
    Bulk(Vec<Part>),
    PreparedBulk,
}

/// The two bounded lanes between callers and the scheduler.
pub(crate) struct RequestQueue {
    state: Mutex<QueueState>,
    wake: Condvar,
    capacity: [usize; 2],
    counters: Arc<Counters>,
}

impl RequestQueue {
    /// `capacity`: texts admitted per lane, interactive first.
    pub(crate) fn new(capacity: [usize; 2], counters: Arc<Counters>) -> RequestQueue {
        RequestQueue {
            state: Mutex::new(QueueState {
                lanes: [VecDeque::new(), VecDeque::new()],
                closed: false,
                executor_freed: false,
                bulk_served_at: Instant::now(),
                interactive_seen_at: None,
            }),
            wake: Condvar::new(),
            capacity,
            counters,
        }
    }

    /// Admits the inputs into `lane` if it has room for them. A request larger than the
    /// lane's whole capacity is still admitted when the lane is empty, so that it can never
    /// be refused forever; the other lane's fill level plays no part.
    pub(crate) fn submit(
        &self,
        lane: Lane,
        inputs: Inputs,
        reply: Reply,
    ) -> Result<(), EmbedError> {
        let n = inputs.len();
        if n == 0 {
            return Err(EmbedError::EmptyInput);
        }
        let mut state = self.lock();
        if state.closed {
            return Err(EmbedError::ShuttingDown);
        }
        let depth = self.counters.depth(lane);
        if depth > 0 && depth + n > self.capacity[lane.index()] {
            self.counters.record_rejection(lane);
            return Err(EmbedError::QueueFull {
                retry_after_ms: self.counters.retry_after_ms(lane),
            });
        }
        self.counters.add_depth(lane, n);
        let request = Arc::new(PendingRequest::new(
            n,
            lane,
            reply,
            Arc::clone(&self.counters),
        ));
        if lane == Lane::Bulk && state.lanes[lane.index()].is_empty() {
            state.bulk_served_at = Instant::now();
        }
        if lane == Lane::Interactive {
            state.interactive_seen_at = Some(Instant::now());
        }
        state.lanes[lane.index()].push_back(QueuedRequest {
            inputs,
            offset: 0,
            request,
        });
        self.wake.notify_one();
        Ok(())
    }

    /// Tells the scheduler an executor finished a batch (bulk work may run now).
    pub(crate) fn executor_freed(&self) {
        self.lock().executor_freed = true;
        self.wake.notify_one();
    }

    /// Waits until there is something to do while `executor_idle` says an executor is idle:
    /// interactive requests (all of them; also when busy once a full round waits), else
    /// prepared bulk batches or a window of bulk texts. `None` once closed; requests still
    /// queued then are dropped, which answers them `ShuttingDown`.
    #[cfg(test)]
    fn next_work(
        &self,
        have_prepared_bulk: bool,
        bulk_window: usize,
        executor_idle: impl Fn() -> bool,
    ) -> Option<Work> {
        self.next_work_reserving(
            have_prepared_bulk,
            bulk_window,
            || usize::from(executor_idle()),
            0,
        )
    }

    /// Executors bulk work must leave idle now: `reserve` while interactive requests
    /// arrived within [`INTERACTIVE_RECENT`], else none.
    pub(crate) fn bulk_reserve(&self, reserve: usize) -> usize {
        self.lock().reserved(reserve)
    }

    /// [`RequestQueue::next_work`] with `idle_executors` counting the idle executors and
    /// bulk work leaving `reserve` of them idle while queries keep arriving, so that a
    /// query does not wait for a bulk batch to finish: on two CPU executors, a query
    /// during a bulk ingest then takes about as long as on an idle worker, and the ingest
    /// runs on the other executor (and on both once queries stop for a moment).
    fn next_work_reserving(
        &self,
        have_prepared_bulk: bool,
        bulk_window: usize,
        idle_executors: impl Fn() -> usize,
        reserve: usize,
    ) -> Option<Work> {
        let mut state = self.lock();
        loop {
            if state.closed {
                state.lanes.iter_mut().for_each(VecDeque::clear);
                return None;
            }
            let bulk_waiting = have_prepared_bulk || !state.lanes[Lane::Bulk.index()].is_empty();
            let idle_count = idle_executors();
            let idle = idle_count > 0;
            let bulk_idle = idle_count > state.reserved(reserve);
            // Starving bulk work with an idle device goes first, once.
            let bulk_first =
                bulk_waiting && state.bulk_served_at.elapsed() >= BULK_MAX_WAIT && idle;
            let interactive = &mut state.lanes[Lane::Interactive.index()];
            let round_ready = idle
                || interactive.iter().map(|q| q.inputs.len()).sum::<usize>() >= FULL_ROUND_TEXTS;
            if !interactive.is_empty() && round_ready && !bulk_first {
                let parts = interactive.drain(..).map(QueuedRequest::whole).collect();
                return Some(Work::Interactive(parts));
            }
            state.executor_freed = false;
            if bulk_waiting && (bulk_idle || bulk_first) {
                state.bulk_served_at = Instant::now();
                if have_prepared_bulk {
                    return Some(Work::PreparedBulk);
                }
                return Some(Work::Bulk(take_window(
                    &mut state.lanes[Lane::Bulk.index()],
                    bulk_window,
                )));
            }
            // An executor that finishes sets `executor_freed` under this lock, so its
            // wake-up cannot fall between the idle check above and this wait. Any wake-up
            // (a submit, a finished batch) leads to one more look; the timeout is only a
            // safety net.
            state = self
                .wake
                .wait_timeout(state, Duration::from_millis(200))
                .unwrap_or_else(|e| e.into_inner())
                .0;
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

impl QueuedRequest {
    fn whole(self) -> Part {
        Part {
            inputs: self.inputs,
            offset: self.offset,
            request: self.request,
        }
    }
}

/// Takes up to `window` inputs from the bulk lane, round-robin: the front request gives
/// what it has up to the window and, when not finished, goes to the back, so concurrent
/// ingests share the devices. Requests whose caller has gone are dropped on the way.
fn take_window(lane: &mut VecDeque<QueuedRequest>, window: usize) -> Vec<Part> {
    let mut parts = Vec::new();
    let mut left = window.max(1);
    let mut visited = 0;
    let queued = lane.len();
    while left > 0 && visited < queued {
        let Some(mut queued_request) = lane.pop_front() else {
            break;
        };
        visited += 1;
        if queued_request.request.is_settled() {
            continue;
        }
        let n = queued_request.inputs.len().min(left);
        left -= n;
        parts.push(Part {
            inputs: queued_request.inputs.take_front(n),
            offset: queued_request.offset,
            request: Arc::clone(&queued_request.request),
        });
        queued_request.offset += n;
        if queued_request.inputs.len() > 0 {
            lane.push_back(queued_request);
        }
    }
    parts
}

/// Batch sizes of the two lanes, in padded tokens, and the bulk window in texts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budgets {
    pub interactive_tokens: usize,
    pub bulk_tokens: usize,
    pub bulk_window: usize,
}

/// The scheduler thread's body: works until the queue closes, then stops the executors.
pub(crate) fn run_scheduler(
    queue: Arc<RequestQueue>,
    tokenizer: TextTokenizer,
    dispatcher: Dispatcher,
    budgets: Budgets,
) {
    let mut prepared: VecDeque<Batch> = VecDeque::new();
    // With two or more executors, one stays free for queries while they keep coming.
    let reserve = usize::from(dispatcher.executors() >= 2);
    loop {
        let work = queue.next_work_reserving(
            !prepared.is_empty(),
            budgets.bulk_window,
            || dispatcher.idle_executors(),
            reserve,
        );
        match work {
            None => break,
            Some(Work::Interactive(parts)) => {
                for batch in into_batches(&tokenizer, parts, budgets.interactive_tokens) {
                    dispatcher.dispatch(batch);
                }
            }
            Some(Work::Bulk(parts)) => {
                prepared.extend(into_batches(&tokenizer, parts, budgets.bulk_tokens));
                dispatch_bulk(&dispatcher, &mut prepared, queue.bulk_reserve(reserve));
            }
            Some(Work::PreparedBulk) => {
                dispatch_bulk(&dispatcher, &mut prepared, queue.bulk_reserve(reserve));
            }
        }
    }
    dispatcher.shutdown();
}

/// Sends prepared bulk batches to idle executors only, so that a bulk batch never waits in
/// an executor's channel where it would hold up an interactive one, and leaves `reserve`
/// executors idle (one is always used, so that bulk work cannot stall).
fn dispatch_bulk(dispatcher: &Dispatcher, prepared: &mut VecDeque<Batch>, reserve: usize) {
    let mut sent = 0;
    while let Some(executor) = dispatcher.idle_executor() {
        if sent > 0 && dispatcher.idle_executors() <= reserve {
            return;
        }
        sent += 1;
        let Some(batch) = prepared.pop_front() else {
            return;
        };
        if let Some(batch) = batch.without_settled_rows() {
            dispatcher.dispatch_to(executor, batch);
        }
    }
}

/// Tokenizes the parts, sorts their rows by length and cuts them into batches.
fn into_batches(tokenizer: &TextTokenizer, parts: Vec<Part>, budget: usize) -> Vec<Batch> {
    let mut rows: Vec<Row> = parts
        .into_iter()
        .flat_map(|part| part.into_rows(tokenizer))
        .collect();
    rows.sort_by_key(|row| row.ids.len());
    let lengths: Vec<usize> = rows.iter().map(|row| row.ids.len()).collect();
    let mut rows = rows.into_iter();
    plan_batches(&lengths, budget)
        .into_iter()
        .map(|range| Batch::new(rows.by_ref().take(range.len()).collect()))
        .collect()
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
mod tests;
