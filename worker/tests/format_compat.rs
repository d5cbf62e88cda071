//! Files and stream entries written by on-disk format version 1 (bincode, the releases
//! before `src/format.rs`) are read by this build, and an upgraded data directory moves to
//! format version 2 as it is written. The fixtures in `tests/fixtures/format-v1` were
//! written by the last version-1 build from the ops in [`ops`].

use kb_config::WorkerConfig;
use kb_worker::format;
use kb_worker::index::Index;
use kb_worker::log::{ChunkRecord, Metadata, Metric, Op};
use kb_worker::snapshot;
use kb_worker::store::Store;
use std::path::{Path, PathBuf};
use tch::Device;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format-v1")
}

fn meta(v: serde_json::Value) -> Metadata {
    v.as_object().unwrap().clone()
}

fn chunk(id: &str, text: &str, metadata: Metadata, vector: Vec<f32>) -> ChunkRecord {
    ChunkRecord {
        chunk_id: id.into(),
        text: text.into(),
        metadata,
        vector,
    }
}

/// The ops the fixtures were written from, in sequence order (sequence = index + 1).
fn ops() -> Vec<Op> {
    let upsert = |collection: &str, doc: &str, chunks| Op::Upsert {
        collection: collection.into(),
        doc_id: doc.into(),
        chunks,
    };
    vec![
        Op::CreateCollection {
            collection: "docs".into(),
            dim: 3,
            metric: Metric::Cosine,
        },
        upsert(
            "docs",
            "a",
            vec![
                chunk(
                    "a-0",
                    "first chunk of a",
                    meta(serde_json::json!({"lang": "en", "tags": ["x", "y"], "n": 3, "ok": true})),
                    vec![1.0, 0.0, 0.0],
                ),
                chunk(
                    "a-1",
                    "second chunk — ünïcode",
                    meta(serde_json::json!({"lang": "en"})),
                    vec![0.5, 0.5, 0.0],
                ),
            ],
        ),
        Op::CreateCollection {
            collection: "raw".into(),
            dim: 2,
            metric: Metric::Dot,
        },
        upsert(
            "raw",
            "r",
            vec![chunk("r-0", "", Metadata::new(), vec![-2.5, 7.0])],
        ),
        upsert(
            "docs",
            "b",
            vec![chunk("b-0", "b", Metadata::new(), vec![0.0, 1.0, 0.0])],
        ),
        Op::Delete {
            collection: "docs".into(),
            doc_id: "b".into(),
        },
        upsert(
            "docs",
            "c",
            vec![chunk(
                "c-0",
                "c",
                meta(serde_json::json!({"lang": "de"})),
                vec![0.0, 0.0, 2.0],
            )],
        ),
        Op::CreateCollection {
            collection: "gone".into(),
            dim: 4,
            metric: Metric::Cosine,
        },
        Op::DropCollection {
            collection: "gone".into(),
        },
    ]
}

/// Every collection's live rows as (collection, doc, chunk, text, metadata, vector).
fn contents(index: &Index) -> Vec<(String, String, String, String, Metadata, Vec<f32>)> {
    let mut out = Vec::new();
    for (name, c) in index.collections() {
        for (row, vector) in c.export().unwrap() {
            out.push((
                name.clone(),
                row.doc_id,
                row.chunk_id,
                row.text,
                row.metadata,
                vector,
            ));
        }
    }
    out
}

/// What the ops leave behind (cosine vectors normalised on insert).
fn expected() -> Vec<(String, String, String, String, Metadata, Vec<f32>)> {
    let h = std::f32::consts::FRAC_1_SQRT_2;
    let s = |x: &str| x.to_string();
    vec![
        (
            s("docs"),
            s("a"),
            s("a-0"),
            s("first chunk of a"),
            meta(serde_json::json!({"lang": "en", "tags": ["x", "y"], "n": 3, "ok": true})),
            vec![1.0, 0.0, 0.0],
        ),
        (
            s("docs"),
            s("a"),
            s("a-1"),
            s("second chunk — ünïcode"),
            meta(serde_json::json!({"lang": "en"})),
            vec![h, h, 0.0],
        ),
        (
            s("docs"),
            s("c"),
            s("c-0"),
            s("c"),
            meta(serde_json::json!({"lang": "de"})),
            vec![0.0, 0.0, 1.0],
        ),
        (
            s("raw"),
            s("r"),
            s("r-0"),
            s(""),
            Metadata::new(),
            vec![-2.5, 7.0],
        ),
    ]
}

fn assert_contents(index: &Index) {
    let got = contents(index);
    let want = expected();
    assert_eq!(got.len(), want.len(), "{got:?}");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(
            (&g.0, &g.1, &g.2, &g.3, &g.4),
            (&w.0, &w.1, &w.2, &w.3, &w.4)
        );
        for (a, b) in g.5.iter().zip(&w.5) {
            assert!((a - b).abs() < 1e-6, "{g:?} vs {w:?}");
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn v1_data_dir() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("data"), tmp.path());
    tmp
}

#[test]
fn a_version_1_data_directory_opens_with_every_record() {
    let tmp = v1_data_dir();
    let (store, recovery) = Store::open(tmp.path(), &WorkerConfig::default(), Device::Cpu).unwrap();
    assert_eq!(recovery.snapshot_seq, Some(5));
    assert_eq!(recovery.replayed, 4);
    assert_eq!(store.index().applied(), 9);
    assert_contents(&store.index());
}

#[test]
fn a_version_1_snapshot_decodes_to_the_same_index() {
    let path = fixtures().join("final.kbsnap");
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[..8], b"KBSNAP01");
    let index = snapshot::decode(&bytes, Device::Cpu, &path).unwrap();
    assert_eq!(index.applied(), 9);
    assert_contents(&index);
}

#[test]
fn version_1_stream_entries_decode_to_their_ops() {
    for (i, op) in ops().into_iter().enumerate() {
        let bytes = std::fs::read(fixtures().join(format!("redis/{:02}.op", i + 1))).unwrap();
        assert_eq!(format::legacy::op(&bytes).unwrap(), op, "entry {}", i + 1);
        // Version 2 round-trips the same op.
        let v2 = format::encode_op(&op).unwrap();
        assert_eq!(format::decode::<Op>(&v2).unwrap(), op);
    }
}

#[test]
fn an_upgraded_data_directory_writes_version_2_and_drops_version_1_after_a_snapshot() {
    let tmp = v1_data_dir();
    let cfg = WorkerConfig::default();
    let wal = tmp.path().join("wal");
    let segment_headers = || -> Vec<Vec<u8>> {
        let mut files: Vec<_> = std::fs::read_dir(&wal)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
            .iter()
            .map(|p| std::fs::read(p).unwrap().into_iter().take(8).collect())
            .collect()
    };
    let extra = Op::Upsert {
        collection: "raw".into(),
        doc_id: "s".into(),
        chunks: vec![chunk("s-0", "new", Metadata::new(), vec![1.0, 1.0])],
    };
    {
        let (store, _) = Store::open(tmp.path(), &cfg, Device::Cpu).unwrap();
        assert_eq!(store.write(vec![extra]).unwrap(), 10);
    }
    // The version-1 segment is kept as it is; the new record went to a version-2 one.
    let headers = segment_headers();
    assert_eq!(headers.len(), 2);
    assert_ne!(headers[0], b"KBWALv02");
    assert_eq!(headers[1], b"KBWALv02");
    let (store, recovery) = Store::open(tmp.path(), &cfg, Device::Cpu).unwrap();
    assert_eq!(recovery.replayed, 5);
    assert_eq!(store.index().get("raw").unwrap().stats().documents, 2);
    // Once the retained snapshots are all version 2, the version-1 files are redundant.
    let path = store.snapshot().unwrap();
    assert_eq!(&std::fs::read(&path).unwrap()[..8], b"KBSNAP02");
    let another = Op::Delete {
        collection: "docs".into(),
        doc_id: "c".into(),
    };
    assert_eq!(store.write(vec![another]).unwrap(), 11);
    store.snapshot().unwrap();
    assert!(segment_headers().iter().all(|h| h == b"KBWALv02"));
    for (_, snap) in snapshot::list(&tmp.path().join("snapshots")).unwrap() {
        assert_eq!(&std::fs::read(snap).unwrap()[..8], b"KBSNAP02");
    }
    drop(store);
    let (store, recovery) = Store::open(tmp.path(), &cfg, Device::Cpu).unwrap();
    assert_eq!(recovery.snapshot_seq, Some(11));
    assert_eq!(store.index().get("raw").unwrap().stats().documents, 2);
    assert_eq!(store.index().get("docs").unwrap().stats().chunks, 2);
}
