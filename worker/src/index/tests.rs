use super::filter::Filter;
use super::*;
use crate::log::ChunkRecord;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tch::Kind;

fn random_vectors(rng: &mut impl Rng, n: usize, dim: usize) -> Vec<Vec<f32>> {
    (0..n)
        .map(|_| (0..dim).map(|_| rng.gen_range(-1.0f32..1.0)).collect())
        .collect()
}

fn chunk(i: usize, vector: Vec<f32>, tag: &str) -> ChunkRecord {
    ChunkRecord {
        chunk_id: format!("chunk-{i}"),
        text: format!("text {i}"),
        metadata: json!({"tag": tag, "i": i}).as_object().unwrap().clone(),
        vector,
    }
}

fn index_with(vectors: &[Vec<f32>], metric: Metric) -> FlatIndex {
    let mut idx = FlatIndex::new(vectors[0].len(), metric, Device::Cpu).unwrap();
    for (i, v) in vectors.iter().enumerate() {
        let tag = if i % 3 == 0 { "a" } else { "b" };
        idx.upsert(&format!("doc-{i}"), &[chunk(i, v.clone(), tag)])
            .unwrap();
    }
    idx
}

/// fp64 brute force: (doc index, score) best first.
fn reference(
    db: &[Vec<f32>],
    q: &[f32],
    k: usize,
    metric: Metric,
    keep: impl Fn(usize) -> bool,
) -> Vec<(usize, f64)> {
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let mut scored: Vec<(usize, f64)> = db
        .iter()
        .enumerate()
        .filter(|(i, _)| keep(*i))
        .map(|(i, v)| {
            let dot: f64 = v.iter().zip(q).map(|(a, b)| *a as f64 * *b as f64).sum();
            let s = match metric {
                Metric::Cosine => dot / (norm(v) * norm(q)),
                Metric::Dot => dot,
            };
            (i, s)
        })
        .collect();
    scored.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap());
    scored.truncate(k);
    scored
}

fn assert_matches_reference(hits: &[flat::Hit], want: &[(usize, f64)]) {
    assert_eq!(hits.len(), want.len());
    for (hit, (i, score)) in hits.iter().zip(want) {
        assert_eq!(hit.row.doc_id, format!("doc-{i}"));
        assert!(
            (hit.score as f64 - score).abs() < 1e-4,
            "{} vs {score}",
            hit.score
        );
    }
}

#[test]
fn top_k_equals_fp64_brute_force_on_random_data() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for metric in [Metric::Cosine, Metric::Dot] {
        let db = random_vectors(&mut rng, 3000, 48);
        let idx = index_with(&db, metric);
        let queries = random_vectors(&mut rng, 20, 48);
        let results = idx.search(&queries, 10, &Filter::default()).unwrap();
        for (q, hits) in queries.iter().zip(&results) {
            assert_matches_reference(hits, &reference(&db, q, 10, metric, |_| true));
        }
    }
}

#[test]
fn filters_and_deletes_are_respected_and_survive_compaction() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let db = random_vectors(&mut rng, 1000, 16);
    let mut idx = index_with(&db, Metric::Cosine);
    let deleted: Vec<usize> = (0..1000).filter(|i| i % 2 == 1).collect();
    for i in &deleted[..100] {
        assert!(idx.delete(&format!("doc-{i}")));
    }
    assert!(!idx.delete("doc-1"), "second delete finds nothing");
    let filter = Filter::parse(&json!({"tag": {"$in": ["a"]}})).unwrap();
    let alive = |i: usize| !(i % 2 == 1 && i < 200);
    let q = &random_vectors(&mut rng, 1, 16)[0];
    let hits = &idx.search(std::slice::from_ref(q), 5, &filter).unwrap()[0];
    assert_matches_reference(
        hits,
        &reference(&db, q, 5, Metric::Cosine, |i| alive(i) && i % 3 == 0),
    );
    // Enough tombstones to trigger compaction; results must not change.
    for i in &deleted[100..] {
        idx.delete(&format!("doc-{i}"));
    }
    let stats = idx.stats();
    assert_eq!(stats.chunks, 500);
    assert!(stats.tombstones < 250, "compaction ran: {stats:?}");
    let hits = &idx
        .search(std::slice::from_ref(q), 5, &Filter::default())
        .unwrap()[0];
    assert_matches_reference(hits, &reference(&db, q, 5, Metric::Cosine, |i| i % 2 == 0));
}

#[test]
fn upsert_replaces_the_chunks_of_a_document() {
    let mut idx = FlatIndex::new(2, Metric::Dot, Device::Cpu).unwrap();
    idx.upsert(
        "d",
        &[chunk(0, vec![1.0, 0.0], "a"), chunk(1, vec![0.0, 1.0], "a")],
    )
    .unwrap();
    idx.upsert("d", &[chunk(2, vec![0.5, 0.5], "a")]).unwrap();
    let stats = idx.stats();
    assert_eq!((stats.documents, stats.chunks), (1, 1));
    let hits = &idx
        .search(&[vec![1.0, 0.0]], 10, &Filter::default())
        .unwrap()[0];
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].row.chunk_id, "chunk-2");
}

#[test]
fn wrong_dimension_is_an_error_not_a_panic() {
    let mut idx = FlatIndex::new(4, Metric::Cosine, Device::Cpu).unwrap();
    assert!(matches!(
        idx.upsert("d", &[chunk(0, vec![1.0], "a")]),
        Err(IndexError::Dimension {
            expected: 4,
            got: 1
        })
    ));
    assert!(idx.search(&[vec![1.0; 3]], 1, &Filter::default()).is_err());
}

#[test]
fn replaying_a_record_twice_is_harmless() {
    let mut index = Index::new(Device::Cpu);
    let create = Record {
        seq: 1,
        op: Op::CreateCollection {
            collection: "c".into(),
            dim: 2,
            metric: Metric::Cosine,
        },
    };
    let upsert = Record {
        seq: 2,
        op: Op::Upsert {
            collection: "c".into(),
            doc_id: "d".into(),
            chunks: vec![chunk(0, vec![1.0, 0.0], "a")],
        },
    };
    for r in [&create, &upsert, &create, &upsert] {
        index.apply(r).unwrap();
    }
    assert_eq!(index.applied(), 2);
    assert_eq!(index.get("c").unwrap().stats().chunks, 1);
}

#[test]
fn collection_versions_follow_the_records_that_change_them() {
    let mut index = Index::new(Device::Cpu);
    let create = |c: &str| Op::CreateCollection {
        collection: c.into(),
        dim: 2,
        metric: Metric::Cosine,
    };
    let upsert = |c: &str, doc: &str| Op::Upsert {
        collection: c.into(),
        doc_id: doc.into(),
        chunks: vec![chunk(0, vec![1.0, 0.0], "a")],
    };
    for (seq, op) in [create("a"), create("b"), upsert("a", "x"), upsert("b", "y")]
        .into_iter()
        .enumerate()
    {
        index
            .apply(&Record {
                seq: seq as Seq + 1,
                op,
            })
            .unwrap();
    }
    assert_eq!((index.version("a"), index.version("b")), (3, 4));
    index
        .apply(&Record {
            seq: 5,
            op: Op::Delete {
                collection: "a".into(),
                doc_id: "x".into(),
            },
        })
        .unwrap();
    assert_eq!((index.version("a"), index.version("b")), (5, 4));

    // Loaded from a snapshot: untouched collections take the snapshot's sequence.
    let mut loaded = Index::new(Device::Cpu);
    loaded.set_applied(5);
    assert_eq!(loaded.version("a"), 5);
    loaded
        .apply(&Record {
            seq: 6,
            op: upsert("a", "z"),
        })
        .ok();
    assert_eq!((loaded.version("a"), loaded.version("b")), (6, 5));
}

#[test]
fn fp16_storage_finds_the_fp64_neighbours_within_half_precision() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let (n, dim, k) = (4000, 64, 10);
    let db = random_vectors(&mut rng, n, dim);
    let mut idx = FlatIndex::with_kind(dim, Metric::Cosine, Device::Cpu, Kind::Half).unwrap();
    for (i, v) in db.iter().enumerate() {
        idx.upsert(&format!("doc-{i}"), &[chunk(i, v.clone(), "a")])
            .unwrap();
    }
    // Half precision: each score within ~1e-3 of the exact one, so a returned row counts
    // as correct when its exact score is within that of the exact k-th best.
    let tolerance = 2e-3;
    let queries = random_vectors(&mut rng, 32, dim);
    let results = idx.search(&queries, k, &Filter::default()).unwrap();
    let (mut correct, mut total) = (0, 0);
    for (q, hits) in queries.iter().zip(&results) {
        let exact = reference(&db, q, n, Metric::Cosine, |_| true);
        let kth = exact[k - 1].1;
        assert_eq!(hits.len(), k);
        for hit in hits {
            let i: usize = hit.row.doc_id["doc-".len()..].parse().unwrap();
            let score = exact.iter().find(|(j, _)| *j == i).unwrap().1;
            assert!((f64::from(hit.score) - score).abs() < tolerance);
            correct += usize::from(score >= kth - tolerance);
            total += 1;
        }
    }
    assert_eq!(correct, total, "every hit is a true top-{k} neighbour");
    // Vectors come back out (snapshots) as fp32 within half precision.
    let exported = idx.export().unwrap();
    let v = &exported[5].1;
    let norm = db[5].iter().map(|x| x * x).sum::<f32>().sqrt();
    for (a, b) in v.iter().zip(&db[5]) {
        assert!((a - b / norm).abs() < 1e-3);
    }
}

#[test]
fn sharded_placement_answers_exactly_like_one_device() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(21);
    let dim = 24;
    let db = random_vectors(&mut rng, 700, dim);
    let one = index_with(&db, Metric::Cosine);
    let mut three = FlatIndex::new(dim, Metric::Cosine, vec![Device::Cpu; 3]).unwrap();
    for (i, v) in db.iter().enumerate() {
        let tag = if i % 3 == 0 { "a" } else { "b" };
        three
            .upsert(&format!("doc-{i}"), &[chunk(i, v.clone(), tag)])
            .unwrap();
    }
    let mut one = one;
    assert_eq!(three.devices().len(), 3);
    let queries = random_vectors(&mut rng, 16, dim);
    let tag_a = Filter::parse(&json!({"tag": "a"})).unwrap();
    let ids = |r: Vec<Vec<flat::Hit>>| -> Vec<Vec<String>> {
        r.into_iter()
            .map(|hits| hits.into_iter().map(|h| h.row.doc_id.clone()).collect())
            .collect()
    };
    let check = |one: &FlatIndex, three: &FlatIndex| {
        for (k, filter) in [
            (10, Filter::default()),
            (7, tag_a.clone()),
            (1000, tag_a.clone()),
        ] {
            let a = one.search(&queries, k, &filter).unwrap();
            let b = three.search(&queries, k, &filter).unwrap();
            for (x, y) in a.iter().zip(&b) {
                for (h, g) in x.iter().zip(y) {
                    assert!((h.score - g.score).abs() < 1e-6);
                }
            }
            assert_eq!(ids(a), ids(b), "k={k}");
        }
        assert_eq!(one.export().unwrap(), three.export().unwrap());
    };
    check(&one, &three);
    // Tombstones, then enough deletes to compact: still the same answers.
    for i in (0..700).step_by(2).take(100) {
        assert!(one.delete(&format!("doc-{i}")));
        assert!(three.delete(&format!("doc-{i}")));
    }
    check(&one, &three);
    for i in (1..700).step_by(2).take(150) {
        one.delete(&format!("doc-{i}"));
        three.delete(&format!("doc-{i}"));
    }
    let stats = three.stats();
    assert!(
        stats.chunks + stats.tombstones < 700,
        "compacted: {stats:?}"
    );
    check(&one, &three);
}

#[test]
fn a_frozen_collection_keeps_its_contents_while_the_index_moves_on() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let db = random_vectors(&mut rng, 1500, 8);
    let mut idx = FlatIndex::new(8, Metric::Cosine, vec![Device::Cpu; 2]).unwrap();
    for (i, v) in db[..1000].iter().enumerate() {
        idx.upsert(&format!("doc-{i}"), &[chunk(i, v.clone(), "a")])
            .unwrap();
    }
    let before = idx.export().unwrap();
    let frozen = idx.freeze().unwrap();
    // Appends past the frozen length (with tensor growth), deletes and a compaction.
    for (i, v) in db.iter().enumerate().skip(1000) {
        idx.upsert(&format!("doc-{i}"), &[chunk(i, v.clone(), "b")])
            .unwrap();
    }
    for i in 0..600 {
        idx.delete(&format!("doc-{i}"));
    }
    assert!(
        idx.stats().chunks + idx.stats().tombstones < 1500,
        "compacted"
    );
    assert_eq!(frozen.export().unwrap(), before);
}

#[test]
fn shard_growth_counts_the_doubled_vectors_and_the_tombstone_mask() {
    // 1,024 fp16 rows of 384 growing by one: capacity doubles to 2,048 rows of 768 bytes,
    // plus one mask byte per row when the shard has deletions.
    assert_eq!(
        flat::growth_bytes(1024, 1025, 384, Kind::Half, false),
        2048 * 768
    );
    assert_eq!(
        flat::growth_bytes(1024, 1025, 384, Kind::Half, true),
        2048 * 769
    );
    // A jump past double takes exactly what is needed.
    assert_eq!(
        flat::growth_bytes(1024, 5000, 4, Kind::Float, true),
        5000 * 17
    );
}

#[test]
fn compaction_waits_for_host_memory_instead_of_outgrowing_the_pod() {
    use crate::host::{tests::fix, HostMemory, HEADROOM};
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let db = random_vectors(&mut rng, 3000, 64);
    let mut idx = index_with(&db, Metric::Cosine);
    // 64 KB free: the compacted copy (2,000 live rows of 64 floats) does not fit.
    let tight = fix(HostMemory {
        limit: Some((1 << 30) + HEADROOM + (64 << 10)),
        working_set: 1 << 30,
        machine_available: None,
    });
    for i in 0..1000 {
        assert!(idx.delete(&format!("doc-{i}")));
    }
    assert_eq!(idx.stats().tombstones, 1000, "compaction was skipped");
    let q = &db[1500];
    let hits = &idx
        .search(std::slice::from_ref(q), 5, &Filter::default())
        .unwrap()[0];
    assert_matches_reference(hits, &reference(&db, q, 5, Metric::Cosine, |i| i >= 1000));
    drop(tight);
    assert!(idx.delete("doc-1000"));
    assert_eq!(idx.stats().tombstones, 0, "compacted once memory allows");
    let hits = &idx
        .search(std::slice::from_ref(q), 5, &Filter::default())
        .unwrap()[0];
    assert_matches_reference(hits, &reference(&db, q, 5, Metric::Cosine, |i| i > 1000));
}

#[test]
fn a_cancelled_search_stops_between_tiles_and_filter_blocks() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(21);
    let db = random_vectors(&mut rng, 40_000, 8);
    let idx = index_with(&db, Metric::Cosine);
    let queries = random_vectors(&mut rng, 2, 8);
    let looks = std::cell::Cell::new(0);
    // Gone after the third look.
    let cancelled = || {
        looks.set(looks.get() + 1);
        looks.get() > 3
    };
    for filter in [
        Filter::default(),
        Filter::parse(&json!({"tag": "a"})).unwrap(),
    ] {
        looks.set(0);
        let err = idx
            .search_in_tiles(&queries, 5, &filter, 1024, &cancelled)
            .unwrap_err();
        assert!(matches!(err, IndexError::Aborted(_)), "{err}");
        assert_eq!(
            looks.get(),
            4,
            "it stopped at the first look after the callers left"
        );
        // Not cancelled: the same search answers.
        let hits = idx
            .search_in_tiles(&queries, 5, &filter, 1024, &|| false)
            .unwrap();
        assert_eq!(hits[0].len(), 5);
    }
}
