//! The two lanes seen from callers: queries overtake a running ingest, a full bulk lane
//! refuses only bulk work, and token-id inputs embed like the text they stand for.

mod common;

use common::{cosine, cpu_embedder};
use kb_embed::{EmbedError, Lane};
use std::time::{Duration, Instant};

fn passage(i: usize) -> String {
    format!(
        "Passage {i}: replicas tail the write-ahead log, apply every record in order and \
         answer queries from their own copy of the index while snapshots are taken."
    )
    .repeat(3)
}

#[test]
fn an_interactive_request_overtakes_a_running_bulk_request() {
    let embedder = cpu_embedder(|cfg| cfg.bulk_batch_tokens = Some(512));
    let bulk_texts: Vec<String> = (0..400).map(passage).collect();
    let total = bulk_texts.len() as u64;
    let bulk = {
        let embedder = embedder.clone();
        std::thread::spawn(move || embedder.embed_blocking(Lane::Bulk, bulk_texts))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while embedder.stats().rows == 0 {
        assert!(Instant::now() < deadline, "the bulk request never started");
        std::thread::sleep(Duration::from_millis(1));
    }
    let query = embedder
        .embed_blocking(
            Lane::Interactive,
            vec!["how do replicas apply records".into()],
        )
        .unwrap();
    let rows_when_answered = embedder.stats().rows;
    assert_eq!(query.vectors.len(), 1);
    assert!(
        !bulk.is_finished() && rows_when_answered < total / 2,
        "the query waited for the bulk request ({rows_when_answered} of {total} rows done)"
    );
    let bulk = bulk.join().unwrap().unwrap();
    assert_eq!(bulk.vectors.len(), 400);
    // Split into bounded batches and still answered in input order.
    let alone = embedder
        .embed_blocking(Lane::Interactive, vec![passage(399)])
        .unwrap();
    assert!(cosine(&bulk.vectors[399], &alone.vectors[0]) >= 0.9999);
}

#[test]
fn a_full_bulk_lane_refuses_bulk_work_only() {
    let embedder = cpu_embedder(|cfg| {
        cfg.bulk_queue_capacity = 8;
        cfg.bulk_batch_tokens = Some(256);
    });
    let busy = embedder.clone();
    let bulk =
        std::thread::spawn(move || busy.embed_blocking(Lane::Bulk, (0..64).map(passage).collect()));
    let deadline = Instant::now() + Duration::from_secs(60);
    while embedder.stats().lanes[1].depth == 0 {
        assert!(Instant::now() < deadline, "the bulk request never queued");
        std::thread::sleep(Duration::from_millis(1));
    }
    let err = embedder
        .embed_blocking(Lane::Bulk, vec!["more ingestion".into()])
        .unwrap_err();
    assert!(matches!(err, EmbedError::QueueFull { .. }), "{err}");
    embedder
        .embed_blocking(Lane::Interactive, vec!["a query still gets in".into()])
        .unwrap();
    let stats = embedder.stats();
    assert_eq!(
        (stats.lanes[0].lane, stats.lanes[0].rejected),
        ("interactive", 0)
    );
    assert_eq!((stats.lanes[1].lane, stats.lanes[1].rejected), ("bulk", 1));
    assert_eq!(bulk.join().unwrap().unwrap().vectors.len(), 64);
    assert_eq!(embedder.stats().queue_depth, 0);
}

#[test]
fn token_ids_embed_like_the_text_they_encode() {
    let embedder = cpu_embedder(|_| {});
    let text = "exact search over a replicated vector index";
    let ids = embedder
        .tokenizer()
        .encode(text, false)
        .unwrap()
        .get_ids()
        .to_vec();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let from_ids = runtime
        .block_on(embedder.embed_token_ids(Lane::Interactive, vec![ids.clone()]))
        .unwrap();
    let from_text = embedder
        .embed_blocking(Lane::Interactive, vec![text.into()])
        .unwrap();
    assert!(cosine(&from_ids.vectors[0], &from_text.vectors[0]) >= 0.99999);
    assert_eq!(from_ids.token_counts, from_text.token_counts);
    let err = runtime
        .block_on(embedder.embed_token_ids(Lane::Interactive, vec![vec![1, 10_000_000]]))
        .unwrap_err();
    assert!(
        matches!(&err, EmbedError::InvalidInput(m) if m.contains("10000000")),
        "{err}"
    );
    let long = runtime
        .block_on(embedder.embed_token_ids(Lane::Interactive, vec![ids.repeat(200)]))
        .unwrap();
    assert_eq!(long.token_counts[0], embedder.max_seq_len());
    assert!(long.truncated[0]);
}

#[test]
fn a_megabyte_text_is_truncated_like_its_beginning() {
    let embedder = cpu_embedder(|_| {});
    let start = "the first words decide the vector of a truncated text ".repeat(60);
    let huge = format!("{start}{}", "and the rest is never read ".repeat(40_000));
    assert!(huge.len() > 1_000_000);
    let out = embedder
        .embed_blocking(Lane::Interactive, vec![huge, start.clone()])
        .unwrap();
    assert_eq!(out.truncated, vec![true, true]);
    assert!(cosine(&out.vectors[0], &out.vectors[1]) >= 0.9999);
}
