//! Unit tests of the two-lane queue and the batch planner.

use super::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// The scheduler's next look, on a thread, while every executor is busy: the returned flag
/// frees one (set it, then call `executor_freed`).
fn next_work_while_busy<T: Send + 'static>(
    queue: &Arc<RequestQueue>,
    judge: impl FnOnce(Option<Work>) -> T + Send + 'static,
) -> (Arc<AtomicBool>, std::thread::JoinHandle<T>) {
    let idle = Arc::new(AtomicBool::new(false));
    let (queue, flag) = (Arc::clone(queue), Arc::clone(&idle));
    let waiter = std::thread::spawn(move || {
        judge(queue.next_work(false, 8, || flag.load(Ordering::SeqCst)))
    });
    (idle, waiter)
}

fn texts(n: usize) -> Inputs {
    Inputs::Texts(vec!["x".to_string(); n].into())
}

fn queue(capacity: [usize; 2]) -> (Arc<Counters>, RequestQueue) {
    let counters = Arc::new(Counters::new(vec!["cpu".into()]));
    let queue = RequestQueue::new(capacity, Arc::clone(&counters));
    (counters, queue)
}

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
fn oversized_request_is_admitted_only_into_an_idle_lane() {
    let (_, queue) = queue([2, 2]);
    let (tx, _rx1) = tokio::sync::oneshot::channel();
    queue.submit(Lane::Interactive, texts(5), tx).unwrap();
    let (tx, _rx2) = tokio::sync::oneshot::channel();
    let err = queue.submit(Lane::Interactive, texts(1), tx).unwrap_err();
    assert!(matches!(err, EmbedError::QueueFull { .. }), "{err}");
    let (tx, _rx3) = tokio::sync::oneshot::channel();
    assert_eq!(
        queue.submit(Lane::Bulk, texts(0), tx),
        Err(EmbedError::EmptyInput)
    );
}

#[test]
fn a_full_bulk_lane_does_not_refuse_interactive_requests() {
    let (counters, queue) = queue([4, 8]);
    let mut answers = Vec::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    answers.push(rx);
    queue.submit(Lane::Bulk, texts(8), tx).unwrap();
    let (tx, _rx) = tokio::sync::oneshot::channel();
    let err = queue.submit(Lane::Bulk, texts(1), tx).unwrap_err();
    assert!(matches!(err, EmbedError::QueueFull { .. }), "{err}");
    let (tx, rx) = tokio::sync::oneshot::channel();
    answers.push(rx);
    queue.submit(Lane::Interactive, texts(3), tx).unwrap();
    let stats = counters.snapshot();
    assert_eq!(stats.lanes[0].depth, 3);
    assert_eq!((stats.lanes[1].depth, stats.lanes[1].rejected), (8, 1));
    assert_eq!(stats.queue_depth, 11);
}

#[test]
fn interactive_work_is_taken_before_bulk_work() {
    let (_, queue) = queue([16, 16]);
    let mut answers = Vec::new();
    for lane in [Lane::Bulk, Lane::Interactive] {
        let (tx, rx) = tokio::sync::oneshot::channel();
        answers.push(rx);
        queue.submit(lane, texts(2), tx).unwrap();
    }
    let first = queue.next_work(false, 8, || true).unwrap();
    assert!(matches!(first, Work::Interactive(ref p) if p.len() == 1));
    let second = queue.next_work(false, 8, || true).unwrap();
    assert!(matches!(second, Work::Bulk(ref p) if p.len() == 1));
}

#[test]
fn bulk_work_that_waited_too_long_goes_ahead_of_queries_once() {
    let (_, queue) = queue([16, 16]);
    let mut answers = Vec::new();
    for lane in [Lane::Bulk, Lane::Interactive, Lane::Interactive] {
        let (tx, rx) = tokio::sync::oneshot::channel();
        answers.push(rx);
        queue.submit(lane, texts(2), tx).unwrap();
    }
    // As if queries had kept the devices busy for longer than BULK_MAX_WAIT.
    queue.lock().bulk_served_at = Instant::now() - BULK_MAX_WAIT;
    let first = queue.next_work(false, 8, || true).unwrap();
    assert!(
        matches!(first, Work::Bulk(_)),
        "the starving bulk request was not served"
    );
    // Served: the queries come first again.
    let second = queue.next_work(false, 8, || true).unwrap();
    assert!(matches!(second, Work::Interactive(ref p) if p.len() == 2));
}

#[test]
fn bulk_requests_are_taken_a_window_at_a_time_round_robin() {
    let (_, queue) = queue([16, 100]);
    let mut answers = Vec::new();
    for n in [10, 3] {
        let (tx, rx) = tokio::sync::oneshot::channel();
        answers.push(rx);
        queue.submit(Lane::Bulk, texts(n), tx).unwrap();
    }
    let mut taken = Vec::new();
    while let Some(Work::Bulk(parts)) = queue.next_work(false, 4, || true) {
        taken.push(
            parts
                .iter()
                .map(|p| (p.offset, p.inputs.len()))
                .collect::<Vec<_>>(),
        );
        if taken.len() == 4 {
            break;
        }
    }
    // 10 texts and 3 texts, windows of 4: the second request is not stuck behind the
    // whole first one.
    assert_eq!(
        taken,
        vec![
            vec![(0, 4)],
            vec![(0, 3), (4, 1)],
            vec![(5, 4)],
            vec![(9, 1)]
        ]
    );
}

#[test]
fn bulk_work_waits_for_an_idle_executor() {
    let (_, queue) = queue([16, 16]);
    let (tx, _rx) = tokio::sync::oneshot::channel();
    queue.submit(Lane::Bulk, texts(2), tx).unwrap();
    let queue = Arc::new(queue);
    let (idle, waiter) = next_work_while_busy(&queue, |work| matches!(work, Some(Work::Bulk(_))));
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        !waiter.is_finished(),
        "bulk work ran with every executor busy"
    );
    idle.store(true, Ordering::SeqCst);
    queue.executor_freed();
    assert!(waiter.join().unwrap());
}

#[test]
fn closing_answers_queued_requests_with_shutting_down() {
    let (counters, queue) = queue([8, 8]);
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    queue.submit(Lane::Bulk, texts(1), tx).unwrap();
    queue.close();
    assert!(queue.next_work(false, 8, || true).is_none());
    assert_eq!(rx.try_recv().unwrap(), Err(EmbedError::ShuttingDown));
    assert_eq!(counters.snapshot().queue_depth, 0);
}

#[test]
fn queries_wait_for_an_idle_executor_and_join_one_round() {
    let (_, queue) = queue([64, 16]);
    let queue = Arc::new(queue);
    let mut answers = Vec::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    answers.push(rx);
    queue.submit(Lane::Interactive, texts(1), tx).unwrap();
    let (idle, waiter) = next_work_while_busy(&queue, |work| match work {
        Some(Work::Interactive(parts)) => parts.len(),
        _ => 0,
    });
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        !waiter.is_finished(),
        "a round of one query was formed while the executor was busy"
    );
    // More queries arrive while the executor works; the round takes all of them.
    for _ in 0..3 {
        let (tx, rx) = tokio::sync::oneshot::channel();
        answers.push(rx);
        queue.submit(Lane::Interactive, texts(1), tx).unwrap();
    }
    idle.store(true, Ordering::SeqCst);
    queue.executor_freed();
    assert_eq!(waiter.join().unwrap(), 4);
}

#[test]
fn a_full_round_of_queries_is_formed_while_the_executors_are_busy() {
    let (_, queue) = queue([2 * FULL_ROUND_TEXTS, 16]);
    let (tx, _rx) = tokio::sync::oneshot::channel();
    queue
        .submit(Lane::Interactive, texts(FULL_ROUND_TEXTS), tx)
        .unwrap();
    let work = queue.next_work(false, 8, || false);
    assert!(matches!(work, Some(Work::Interactive(ref p)) if p.len() == 1));
}

#[test]
fn while_queries_keep_coming_bulk_work_leaves_an_executor_free_for_them() {
    let (_, queue) = queue([16, 16]);
    let queue = Arc::new(queue);
    let (tx, _rx) = tokio::sync::oneshot::channel();
    queue.submit(Lane::Interactive, texts(1), tx).unwrap();
    assert!(matches!(
        queue.next_work_reserving(false, 8, || 2, 1),
        Some(Work::Interactive(_))
    ));
    let (tx, _bulk) = tokio::sync::oneshot::channel();
    queue.submit(Lane::Bulk, texts(2), tx).unwrap();
    // Two idle executors: bulk work may take one of them.
    assert_eq!(queue.bulk_reserve(1), 1);
    let (tx, _more) = tokio::sync::oneshot::channel();
    queue.submit(Lane::Bulk, texts(2), tx).unwrap();
    assert!(matches!(
        queue.next_work_reserving(false, 2, || 2, 1),
        Some(Work::Bulk(_))
    ));
    // One idle executor, a query just seen: the bulk work waits for it...
    let waiting = Arc::clone(&queue);
    let waiter = std::thread::spawn(move || {
        matches!(
            waiting.next_work_reserving(false, 2, || 1, 1),
            Some(Work::Bulk(_))
        )
    });
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        !waiter.is_finished(),
        "bulk work took the last idle executor while queries were arriving"
    );
    // ...until queries stop for a moment (or bulk work starves: BULK_MAX_WAIT).
    assert!(waiter.join().unwrap());
    assert_eq!(
        queue.bulk_reserve(1),
        0,
        "no query for a while: nothing reserved"
    );
}
