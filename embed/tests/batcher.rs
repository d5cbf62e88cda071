//! The dynamic batcher seen from callers: many threads, tiny queues, odd inputs.

mod common;

use common::{cosine, cpu_embedder, model_dir};
use kb_embed::{EmbedError, Embedder, EmbeddingConfig, Lane};
use std::time::{Duration, Instant};

fn passage(i: usize) -> String {
    let words = [
        "index", "replica", "snapshot", "vector", "query", "token", "batch", "GPU",
    ];
    let n = 3 + (i * 7) % 40;
    (0..n)
        .map(|j| words[(i + j) % words.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

fn alone(embedder: &Embedder, texts: &[String]) -> Vec<Vec<f32>> {
    texts
        .iter()
        .map(|t| {
            embedder
                .embed_blocking(Lane::Interactive, vec![t.clone()])
                .unwrap()
                .vectors
                .remove(0)
        })
        .collect()
}

#[test]
fn concurrent_requests_get_the_vectors_they_would_get_alone() {
    let embedder = cpu_embedder(|cfg| cfg.max_batch_tokens = 512);
    let requests: Vec<Vec<String>> = (0..12)
        .map(|r| (0..1 + r % 5).map(|i| passage(r * 10 + i)).collect())
        .collect();
    let expected: Vec<Vec<Vec<f32>>> = requests
        .iter()
        .map(|texts| alone(&embedder, texts))
        .collect();
    let answers: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = requests
            .iter()
            .map(|texts| {
                let embedder = embedder.clone();
                scope.spawn(move || {
                    embedder
                        .embed_blocking(Lane::Interactive, texts.clone())
                        .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (r, (answer, expected)) in answers.iter().zip(&expected).enumerate() {
        assert_eq!(answer.vectors.len(), expected.len(), "request {r}");
        for (got, want) in answer.vectors.iter().zip(expected) {
            assert!(
                cosine(got, want) >= 0.9999,
                "request {r}: cosine {}",
                cosine(got, want)
            );
        }
    }
}

#[test]
fn a_large_request_is_split_into_batches_and_answered_in_input_order() {
    let embedder = cpu_embedder(|cfg| {
        cfg.max_seq_len = 32;
        cfg.max_batch_tokens = 96;
    });
    let texts: Vec<String> = (0..40).map(passage).collect();
    let expected = alone(&embedder, &texts);
    let batches_before = embedder.stats().batches;
    let answer = embedder
        .embed_blocking(Lane::Interactive, texts.clone())
        .unwrap();
    assert!(
        embedder.stats().batches - batches_before > 1,
        "one request should span batches"
    );
    assert_eq!(answer.vectors.len(), texts.len());
    for (i, (got, want)) in answer.vectors.iter().zip(&expected).enumerate() {
        assert!(cosine(got, want) >= 0.9999, "text {i} out of place");
    }
}

#[test]
fn a_full_queue_answers_queue_full_at_once() {
    let embedder = cpu_embedder(|cfg| cfg.queue_capacity = 4);
    let busy = embedder.clone();
    let long: Vec<String> = (0..48).map(|i| passage(i).repeat(4)).collect();
    let worker = std::thread::spawn(move || busy.embed_blocking(Lane::Interactive, long));
    let deadline = Instant::now() + Duration::from_secs(30);
    while embedder.stats().queue_depth == 0 {
        assert!(
            Instant::now() < deadline,
            "the large request never showed in the queue"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let err = embedder
        .embed_blocking(Lane::Interactive, vec!["one more".into()])
        .unwrap_err();
    // The 48 long passages take seconds on a CPU: an answer that came while they still run
    // did not wait for room in the queue (a wall-clock bound would flake on a loaded machine).
    assert!(
        !worker.is_finished(),
        "the rejection came only after the queued request had finished"
    );
    assert!(
        matches!(err, EmbedError::QueueFull { retry_after_ms } if retry_after_ms > 0),
        "{err}"
    );
    assert_eq!(worker.join().unwrap().unwrap().vectors.len(), 48);
    assert_eq!(embedder.stats().queue_depth, 0);
    assert!(embedder
        .embed_blocking(Lane::Interactive, vec!["now there is room".into()])
        .is_ok());
}

#[test]
fn empty_input_is_rejected() {
    let embedder = cpu_embedder(|_| {});
    assert_eq!(
        embedder
            .embed_blocking(Lane::Interactive, Vec::new())
            .unwrap_err(),
        EmbedError::EmptyInput
    );
}

#[test]
fn a_text_longer_than_max_seq_len_is_truncated_and_reported() {
    let embedder = cpu_embedder(|cfg| cfg.max_seq_len = 16);
    assert_eq!(embedder.max_seq_len(), 16);
    let long = "replicas tail the log and apply every record in order ".repeat(10);
    let out = embedder
        .embed_blocking(Lane::Interactive, vec![long.clone(), "short text".into()])
        .unwrap();
    assert_eq!(out.truncated, vec![true, false]);
    assert_eq!(out.token_counts, vec![16, 4]);
    // The public tokenizer still sees the whole text, for the worker's chunker.
    let full = embedder.tokenizer().encode(long.as_str(), true).unwrap();
    assert!(full.len() > 16 * 4, "{} tokens", full.len());
}

#[test]
fn async_embed_answers_on_a_tokio_runtime() {
    let embedder = cpu_embedder(|_| {});
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let out = runtime.block_on(async {
        let a = embedder.embed(Lane::Interactive, vec!["first".into()]);
        let b = embedder.embed(Lane::Interactive, vec!["second".into(), "third".into()]);
        let (a, b) = tokio::join!(a, b);
        (a.unwrap(), b.unwrap())
    });
    assert_eq!((out.0.vectors.len(), out.1.vectors.len()), (1, 2));
    assert_eq!(out.1.vectors[1].len(), embedder.dim());
}

#[test]
fn an_unavailable_cuda_device_is_a_device_error() {
    // Without GPUs plain "cuda" is unavailable; with them, one index past the last.
    let count = tch::Cuda::device_count();
    let device = if count == 0 {
        "cuda".to_string()
    } else {
        format!("cuda:{count}")
    };
    let cfg = EmbeddingConfig {
        device,
        ..EmbeddingConfig::default()
    };
    let err = Embedder::load(&model_dir(), &cfg)
        .err()
        .expect("must not load");
    assert!(matches!(err, EmbedError::Device(_)), "{err}");
}

#[test]
fn stats_count_rows_and_tokens() {
    let embedder = cpu_embedder(|_| {});
    assert_eq!(embedder.devices(), vec!["cpu".to_string()]);
    embedder
        .embed_blocking(
            Lane::Interactive,
            vec!["a b c".into(), "a much longer text here".into()],
        )
        .unwrap();
    let stats = embedder.stats();
    assert_eq!(stats.rows, 2);
    assert!(stats.padded_tokens >= stats.real_tokens && stats.real_tokens > 0);
    // As many executors as the measured layout chose, all on the one device.
    let executors = embedder.layout_calibration().map_or(1, |layout| {
        let chosen = layout.trials.iter().find(|t| t.name() == layout.chosen);
        chosen.expect("the chosen layout was measured").executors
    });
    assert_eq!(stats.devices.len(), executors);
    assert!(stats.devices.iter().map(|d| d.busy_seconds).sum::<f64>() > 0.0);
}

#[test]
fn the_served_model_name_comes_from_the_model_card_or_the_config() {
    assert_eq!(cpu_embedder(|_| {}).model_name(), "all-MiniLM-L6-v2");
    let renamed = cpu_embedder(|cfg| cfg.model_name = Some("docs-embedder".into()));
    assert_eq!(renamed.model_name(), "docs-embedder");
}
