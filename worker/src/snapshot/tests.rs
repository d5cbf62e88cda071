use super::*;
use crate::index::filter::Filter;
use crate::index::Placement;
use crate::log::{ChunkRecord, Metadata, Op, Record};
use tch::Device;

/// Applies `ops` as records 1, 2, ...
fn apply_all(index: &mut Index, ops: impl IntoIterator<Item = Op>) {
    for (i, op) in ops.into_iter().enumerate() {
        let record = Record {
            seq: i as u64 + 1,
            op,
        };
        index.apply(&record).unwrap();
    }
}

fn sample_index() -> Index {
    let mut index = Index::new(Device::Cpu);
    let ops = [
        Op::CreateCollection {
            collection: "c".into(),
            dim: 3,
            metric: Metric::Cosine,
        },
        Op::Upsert {
            collection: "c".into(),
            doc_id: "d1".into(),
            chunks: vec![ChunkRecord {
                chunk_id: "d1#0".into(),
                text: "hello".into(),
                metadata: serde_json::json!({"lang": "en"})
                    .as_object()
                    .unwrap()
                    .clone(),
                vector: vec![1.0, 0.0, 0.0],
            }],
        },
        Op::Upsert {
            collection: "c".into(),
            doc_id: "d2".into(),
            chunks: vec![ChunkRecord {
                chunk_id: "d2#0".into(),
                text: "world".into(),
                metadata: Metadata::new(),
                vector: vec![0.0, 1.0, 0.0],
            }],
        },
        Op::Delete {
            collection: "c".into(),
            doc_id: "d2".into(),
        },
    ];
    apply_all(&mut index, ops);
    index
}

#[test]
fn saved_snapshot_loads_back_with_sequence_and_hits() {
    let dir = tempfile::tempdir().unwrap();
    save(&sample_index(), dir.path(), 2).unwrap();
    let loaded = load_newest(dir.path(), Device::Cpu).unwrap().unwrap();
    assert_eq!(loaded.applied(), 4);
    let c = loaded.get("c").unwrap();
    assert_eq!(c.stats().chunks, 1);
    let hits = &c
        .search(&[vec![1.0, 0.0, 0.0]], 5, &Filter::default())
        .unwrap()[0];
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].row.doc_id, "d1");
    assert_eq!(hits[0].row.metadata["lang"], "en");
}

#[test]
fn corrupt_newest_snapshot_falls_back_to_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut index = sample_index();
    save(&index, dir.path(), 2).unwrap();
    index.set_applied(9);
    let newest = save(&index, dir.path(), 2).unwrap();
    let mut bytes = fs::read(&newest).unwrap();
    bytes[20] ^= 0x55;
    fs::write(&newest, &bytes).unwrap();
    let err = decode(&bytes, Device::Cpu, &newest).err().expect("corrupt");
    assert!(err.to_string().contains("checksum"), "{err}");
    let loaded = load_newest(dir.path(), Device::Cpu).unwrap().unwrap();
    assert_eq!(loaded.applied(), 4);
}

#[test]
fn truncated_snapshot_is_rejected() {
    let bytes = encode(&sample_index()).unwrap();
    let cut = &bytes[..bytes.len() - 5];
    assert!(decode(cut, Device::Cpu, Path::new("x")).is_err());
}

#[test]
fn a_stream_check_verifies_in_pieces_and_catches_corruption() {
    let mut index = sample_index();
    index.set_applied(300); // a multi-byte varint
    let bytes = encode(&index).unwrap();
    for piece in [1, 3, 7, 64, bytes.len()] {
        let mut check = StreamCheck::default();
        for part in bytes.chunks(piece) {
            check.update(part);
        }
        let checked = check.finish().unwrap();
        assert_eq!(checked.sequence, 300);
        assert_eq!(checked.bytes, bytes.len() as u64);
        assert_eq!(checked.format, "KBSNAP02");
    }
    let mut corrupt = bytes.clone();
    corrupt[40] ^= 1;
    let mut check = StreamCheck::default();
    check.update(&corrupt);
    assert_eq!(check.finish().unwrap_err(), "checksum mismatch");
    let mut check = StreamCheck::default();
    check.update(&bytes[..bytes.len() - 1]);
    assert!(check.finish().is_err());
}

#[test]
fn only_the_newest_snapshots_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut index = sample_index();
    for seq in 10..14 {
        index.set_applied(seq);
        save(&index, dir.path(), 2).unwrap();
    }
    let seqs: Vec<Seq> = list(dir.path())
        .unwrap()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(seqs, vec![13, 12]);
}

/// An index of `docs` documents of two chunks each in collection "big" (dimension 8,
/// cosine) and one document in "small" (dot), on `placement`, with every fifth document
/// deleted (tombstones that snapshots must skip).
fn larger_index(placement: impl Into<Placement>, docs: usize) -> Index {
    let mut index = Index::new(placement);
    let mut ops = vec![
        Op::CreateCollection {
            collection: "big".into(),
            dim: 8,
            metric: Metric::Cosine,
        },
        Op::CreateCollection {
            collection: "small".into(),
            dim: 2,
            metric: Metric::Dot,
        },
        Op::Upsert {
            collection: "small".into(),
            doc_id: "s".into(),
            chunks: vec![ChunkRecord {
                chunk_id: "s#0".into(),
                text: "only".into(),
                metadata: Metadata::new(),
                vector: vec![3.0, -1.5],
            }],
        },
    ];
    for d in 0..docs {
        let chunks = (0..2)
            .map(|c| ChunkRecord {
                chunk_id: format!("d{d}#{c}"),
                text: format!("text {d} {c} é"),
                metadata: serde_json::json!({"d": d, "c": c})
                    .as_object()
                    .unwrap()
                    .clone(),
                vector: (0..8)
                    .map(|i| ((d * 31 + c * 7 + i) % 13) as f32 - 6.0)
                    .collect(),
            })
            .collect();
        ops.push(Op::Upsert {
            collection: "big".into(),
            doc_id: format!("d{d}"),
            chunks,
        });
    }
    ops.extend((0..docs).step_by(5).map(|d| Op::Delete {
        collection: "big".into(),
        doc_id: format!("d{d}"),
    }));
    apply_all(&mut index, ops);
    index
}

/// A collection's live rows with their vectors.
type Rows = Vec<(Row, Vec<f32>)>;

/// Every collection's live rows with their vectors.
fn contents(index: &Index) -> Vec<(String, Rows)> {
    index
        .collections()
        .map(|(name, c)| (name.clone(), c.export().unwrap()))
        .collect()
}

/// The file as the serde-derived encoding of [`SnapshotData`] frames it: what builds
/// before the streamed writer wrote, and what older builds read.
fn serde_encoding(index: &Index) -> Vec<u8> {
    let collections = index
        .collections()
        .map(|(name, c)| CollectionData {
            name: name.clone(),
            dim: c.dim(),
            metric: c.metric(),
            rows: c
                .export()
                .unwrap()
                .into_iter()
                .map(|(row, vector)| RowData {
                    metadata: serde_json::to_string(&row.metadata).unwrap(),
                    doc_id: row.doc_id,
                    chunk_id: row.chunk_id,
                    text: row.text,
                    vector,
                })
                .collect(),
        })
        .collect();
    let data = SnapshotData {
        seq: index.applied(),
        collections,
    };
    frame(&crate::format::encode(&data).unwrap())
}

/// A snapshot file around `payload`: magic, payload, CRC32, length.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(payload);
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out
}

#[test]
fn the_streamed_file_is_the_serde_encoding_byte_for_byte() {
    // Over several chunks, on one and on two shards (chunks cut across the shards'
    // interleaving), with tombstones.
    for placement in [vec![Device::Cpu], vec![Device::Cpu, Device::Cpu]] {
        let index = larger_index(placement.clone(), 2 * CHUNK_ROWS + 300);
        let streamed = encode(&index).unwrap();
        assert_eq!(streamed, serde_encoding(&index), "{placement:?}");
        let dir = tempfile::tempdir().unwrap();
        let path = save(&index, dir.path(), 1).unwrap();
        assert_eq!(fs::read(&path).unwrap(), streamed);
    }
}

#[test]
fn a_file_loads_in_a_stream_with_every_row() {
    let index = larger_index(Device::Cpu, CHUNK_ROWS + 77);
    let dir = tempfile::tempdir().unwrap();
    let path = save(&index, dir.path(), 1).unwrap();
    for placement in [vec![Device::Cpu], vec![Device::Cpu, Device::Cpu]] {
        let loaded = load_file(&path, placement).unwrap();
        assert_eq!(loaded.applied(), index.applied());
        assert_eq!(contents(&loaded), contents(&index));
        let serde_bytes = serde_encoding(&index);
        let decoded = decode(&serde_bytes, Device::Cpu, &path).unwrap();
        assert_eq!(contents(&decoded), contents(&index));
    }
    assert_eq!(verify_file(&path).unwrap(), index.applied());
    // A placement with the CPU screen loads screened collections.
    let screened = Placement::from(Device::Cpu).with_cpu_screen(true);
    assert!(load_file(&path, screened)
        .unwrap()
        .get("big")
        .unwrap()
        .is_screened());
    assert!(!load_file(&path, Device::Cpu)
        .unwrap()
        .get("big")
        .unwrap()
        .is_screened());
}

#[test]
fn a_corrupt_or_truncated_file_is_refused_by_the_streamed_load() {
    let index = larger_index(Device::Cpu, 100);
    let dir = tempfile::tempdir().unwrap();
    let path = save(&index, dir.path(), 1).unwrap();
    let good = fs::read(&path).unwrap();
    let mut corrupt = good.clone();
    corrupt[good.len() / 2] ^= 0x10;
    fs::write(&path, &corrupt).unwrap();
    let err = load_file(&path, Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("checksum"), "{err}");
    fs::write(&path, &good[..good.len() - 3]).unwrap();
    let err = load_file(&path, Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("length mismatch"), "{err}");
}

/// Rewrites a version-2 file's payload with `edit` and fixes its checksum and length, so
/// that only the payload's own checks can refuse it.
fn reframe(file: &[u8], edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut payload = file[MAGIC.len()..file.len() - TRAILER].to_vec();
    edit(&mut payload);
    frame(&payload)
}

#[test]
fn announced_counts_past_the_payload_are_refused_before_allocating() {
    // One collection "c" (dim 3) of one row: version, seq, 1, name, dim, metric, rows.
    let file = encode(&sample_index()).unwrap();
    let rows_at = 1 + 1 + 1 + 2 + 1 + 1;
    let file = reframe(&file, |p| {
        assert_eq!(&p[3..5], &[1, b'c']);
        assert_eq!(p[rows_at], 1);
        // u64::MAX rows: a reader that trusted it would try to allocate them.
        p.splice(rows_at..=rows_at, [0xff; 9].into_iter().chain([0x01]));
    });
    let err = decode(&file, Device::Cpu, Path::new("x"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("cannot hold"), "{err}");
    let trailing = reframe(&encode(&sample_index()).unwrap(), |p| p.push(0));
    let err = decode(&trailing, Device::Cpu, Path::new("x"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("after the last row"), "{err}");
}

#[test]
fn a_flipped_or_crafted_dimension_is_refused_before_anything_is_allocated() {
    // version, seq 1, one collection "c", dimension 2^40, metric 0, no rows: a valid
    // checksum around a payload whose collection would take 4 PiB per 1,024 rows.
    let mut payload = vec![crate::format::VERSION, 1, 1, 1, b'c'];
    let mut dim: u64 = 1 << 40;
    while dim >= 0x80 {
        payload.push((dim as u8 & 0x7f) | 0x80);
        dim >>= 7;
    }
    payload.push(dim as u8);
    payload.extend([0, 0]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(file_name(1));
    fs::write(&path, frame(&payload)).unwrap();
    for err in [
        load_file(&path, Device::Cpu).err().expect("refused"),
        verify_file(&path).expect_err("verify refuses it too"),
    ] {
        let msg = err.to_string();
        assert!(matches!(err, SnapshotError::Invalid(..)), "{msg}");
        assert!(msg.contains("dimension 1099511627776"), "{msg}");
    }
}

#[test]
fn a_loaded_collections_first_allocation_counts_against_the_memory_bound() {
    use crate::host::{tests::fix, HostMemory, HEADROOM};
    // 64 KiB free; a collection of dimension 65,536 allocates 1,024 rows (256 MiB) at once,
    // even with no row in it.
    let _tight = fix(HostMemory {
        limit: Some((1 << 30) + HEADROOM + (64 << 10)),
        working_set: 1 << 30,
        machine_available: None,
    });
    let build = |dim| {
        crate::index::flat::FlatIndex::builder(
            dim,
            crate::log::Metric::Cosine,
            Device::Cpu,
            tch::Kind::Float,
            0,
        )
    };
    let err = build(crate::index::MAX_DIM).err().expect("refused");
    assert!(err.to_string().contains("resources.limits.memory"), "{err}");
    assert!(build(3).is_ok());
}

#[test]
fn a_snapshot_that_does_not_fit_is_an_error_not_a_fallback_to_an_older_one() {
    use crate::host::{tests::fix, HostMemory, HEADROOM};
    let dir = tempfile::tempdir().unwrap();
    save(&sample_index(), dir.path(), 2).unwrap();
    // Newer and larger: 2 x 3,000 rows of 8 floats (~190 KB) against 64 KB free.
    let mut big = larger_index(Device::Cpu, 3000);
    big.set_applied(10_000);
    save(&big, dir.path(), 2).unwrap();
    let _tight = fix(HostMemory {
        limit: Some((1 << 30) + HEADROOM + (64 << 10)),
        working_set: 1 << 30,
        machine_available: None,
    });
    let err = load_newest(dir.path(), Device::Cpu).err().expect("refused");
    let msg = err.to_string();
    assert!(msg.contains("resources.limits.memory"), "{msg}");
    drop(_tight);
    let loaded = load_newest(dir.path(), Device::Cpu).unwrap().unwrap();
    assert_eq!(loaded.applied(), 10_000);
}

/// Names in `dir`, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn an_incoming_snapshot_gets_its_name_only_once_whole_and_valid() {
    let mut index = larger_index(Device::Cpu, 300);
    index.set_applied(777);
    let bytes = encode(&index).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut incoming = Incoming::create(dir.path()).unwrap();
    for piece in bytes.chunks(1000) {
        incoming.write(piece).unwrap();
    }
    let (checked, path) = incoming.finish(|c| file_name(c.sequence)).unwrap();
    assert_eq!((checked.sequence, checked.bytes), (777, bytes.len() as u64));
    assert_eq!(path, dir.path().join(file_name(777)));
    assert_eq!(fs::read(&path).unwrap(), bytes);
    assert_eq!(
        names_in(dir.path()),
        [file_name(777)],
        "no temporary file left"
    );

    // Cut short, framed right but with a byte past the last row, or dropped half-way:
    // refused, and nothing is left behind.
    let trailing = reframe(&bytes, |p| p.push(0));
    for (what, data) in [
        ("truncated", &bytes[..bytes.len() - 5]),
        ("trailing", &trailing),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut incoming = Incoming::create(dir.path()).unwrap();
        incoming.write(data).unwrap();
        let err = incoming.finish(|c| file_name(c.sequence)).err();
        assert!(err.is_some(), "{what} accepted");
        assert!(
            names_in(dir.path()).is_empty(),
            "{what}: {:?}",
            names_in(dir.path())
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let mut incoming = Incoming::create(dir.path()).unwrap();
    incoming.write(&bytes[..100]).unwrap();
    drop(incoming);
    assert!(names_in(dir.path()).is_empty());
}

#[test]
fn a_file_verifies_without_an_index_and_corruption_is_named() {
    let index = larger_index(Device::Cpu, 50);
    let dir = tempfile::tempdir().unwrap();
    let path = save(&index, dir.path(), 1).unwrap();
    assert_eq!(verify_file(&path).unwrap(), index.applied());
    let good = fs::read(&path).unwrap();
    fs::write(&path, reframe(&good, |p| p.truncate(p.len() - 1))).unwrap();
    let err = verify_file(&path).unwrap_err().to_string();
    assert!(err.contains("ends early"), "{err}");
}

#[test]
fn a_lexical_placement_rebuilds_the_lexical_index_from_the_snapshot_texts() {
    let index = sample_index();
    let dir = tempfile::tempdir().unwrap();
    let path = save(&index, dir.path(), 1).unwrap();
    let lexical =
        Placement::from(Device::Cpu).with_lexical(Some(crate::index::lexical::Analyzer::Standard));
    let loaded = load_file(&path, lexical).unwrap();
    let hits = loaded
        .get("c")
        .unwrap()
        .lexical_search("HELLO there", 10, &Filter::default())
        .unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].row.doc_id, "d1");
    let plain = load_file(&path, Device::Cpu).unwrap();
    let err = plain
        .get("c")
        .unwrap()
        .lexical_search("hello", 10, &Filter::default())
        .unwrap_err();
    assert!(matches!(err, crate::index::IndexError::LexicalOff));
}
