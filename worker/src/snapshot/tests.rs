use super::*;
use crate::index::filter::Filter;
use crate::log::{ChunkRecord, Op, Record};
use tch::Device;

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
    for (i, op) in ops.into_iter().enumerate() {
        index
            .apply(&Record {
                seq: i as u64 + 1,
                op,
            })
            .unwrap();
    }
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
