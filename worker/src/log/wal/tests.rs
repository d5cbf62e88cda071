use super::*;
use crate::log::Metric;

#[test]
fn records_with_metadata_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path());
    let upsert = Op::Upsert {
        collection: "c".into(),
        doc_id: "d".into(),
        chunks: vec![crate::log::ChunkRecord {
            chunk_id: "d#0".into(),
            text: "t".into(),
            metadata: serde_json::json!({"n": 1, "tags": ["a"], "ok": true})
                .as_object()
                .unwrap()
                .clone(),
            vector: vec![0.5, 0.25],
        }],
    };
    wal.append(vec![op(1), upsert.clone()]).unwrap();
    drop(wal);
    let (wal, report) = open(dir.path());
    assert_eq!(report.truncated_bytes, 0);
    assert_eq!(wal.read_after(1).unwrap()[0].op, upsert);
}

#[test]
fn checksummed_but_undecodable_frame_is_an_error_not_a_cut() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path());
    wal.append(vec![op(1)]).unwrap();
    drop(wal);
    let seg = list_segments(dir.path()).unwrap()[0].1.clone();
    let payload = [0xffu8; 5];
    let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&(payload.len() as u32).to_le_bytes()).unwrap();
    f.write_all(&crc32fast::hash(&payload).to_le_bytes())
        .unwrap();
    f.write_all(&payload).unwrap();
    drop(f);
    let err = FileWal::open(dir.path(), FsyncPolicy::Always, 0)
        .err()
        .expect("corrupt");
    assert!(matches!(err, LogError::Corrupt(_)), "{err}");
}

fn op(n: usize) -> Op {
    Op::CreateCollection {
        collection: format!("c{n}"),
        dim: n,
        metric: Metric::Cosine,
    }
}

fn open(dir: &Path) -> (FileWal, OpenReport) {
    FileWal::open(dir, FsyncPolicy::Always, 0).unwrap()
}

#[test]
fn appended_records_survive_reopen_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path());
    let recs = wal.append(vec![op(1), op(2)]).unwrap();
    assert_eq!(recs.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2]);
    wal.append(vec![op(3)]).unwrap();
    drop(wal);
    let (wal, report) = open(dir.path());
    assert_eq!(report.records, 3);
    assert_eq!(wal.last_seq(), 3);
    let all = wal.read_after(1).unwrap();
    assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![2, 3]);
    assert_eq!(all[1].op, op(3));
}

#[test]
fn torn_tail_is_cut_and_earlier_records_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path());
    wal.append(vec![op(1), op(2)]).unwrap();
    drop(wal);
    let seg = list_segments(dir.path()).unwrap()[0].1.clone();
    let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&[200, 0, 0, 0, 1, 2, 3]).unwrap();
    drop(f);
    let (wal, report) = open(dir.path());
    assert_eq!(report.truncated_bytes, 7);
    assert_eq!(wal.last_seq(), 2);
    wal.append(vec![op(3)]).unwrap();
    assert_eq!(wal.read_after(0).unwrap().len(), 3);
}

#[test]
fn flipped_byte_in_tail_is_detected_by_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path());
    wal.append(vec![op(1)]).unwrap();
    wal.append(vec![op(2)]).unwrap();
    drop(wal);
    let seg = list_segments(dir.path()).unwrap()[0].1.clone();
    let mut bytes = fs::read(&seg).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&seg, bytes).unwrap();
    let (wal, report) = open(dir.path());
    assert!(report.truncated_bytes > 0);
    assert_eq!(wal.last_seq(), 1);
}

#[test]
fn truncation_drops_only_segments_covered_by_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path());
    wal.append(vec![op(1), op(2)]).unwrap();
    wal.truncate_before(2).unwrap();
    wal.append(vec![op(3)]).unwrap();
    wal.truncate_before(2).unwrap();
    wal.append(vec![op(4)]).unwrap();
    assert_eq!(
        wal.read_after(2)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect::<Vec<_>>(),
        vec![3, 4]
    );
    drop(wal);
    let (wal, _) = FileWal::open(dir.path(), FsyncPolicy::Always, 2).unwrap();
    assert_eq!(wal.last_seq(), 4);
    assert_eq!(list_segments(dir.path()).unwrap()[0].0, 3);
}

fn seqs(wal: &FileWal) -> Vec<Seq> {
    wal.read_after(0).unwrap().iter().map(|r| r.seq).collect()
}

#[test]
fn a_write_that_fills_the_disk_is_cut_back_and_later_writes_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path());
    wal.append(vec![op(1)]).unwrap();
    // The disk fills after 5 bytes of the next frame.
    wal.faults().fail_write_after = Some(5);
    let err = wal.append(vec![op(2)]).unwrap_err();
    assert!(
        matches!(&err, LogError::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull),
        "{err}"
    );
    assert_eq!(err.public_message(), "no space left on the data volume");
    assert_eq!(wal.last_seq(), 1, "a failed append does not use a sequence");
    // Space is back: the next append succeeds without intervention.
    assert_eq!(wal.append(vec![op(3)]).unwrap()[0].seq, 2);
    drop(wal);
    let (wal, report) = open(dir.path());
    assert_eq!(
        report.truncated_bytes, 0,
        "no partial frame was left behind"
    );
    assert_eq!(seqs(&wal), vec![1, 2]);
    assert_eq!(wal.read_after(1).unwrap()[0].op, op(3));
}

#[test]
fn a_failed_fsync_poisons_the_wal_instead_of_reusing_the_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path());
    wal.append(vec![op(1)]).unwrap();
    wal.faults().fail_sync = true;
    let err = wal.append(vec![op(2)]).unwrap_err();
    assert!(matches!(err, LogError::Poisoned(_)), "{err}");
    let message = err.public_message();
    assert!(
        message.contains("fsync") && message.contains("restart"),
        "{message}"
    );
    assert!(!message.contains(dir.path().to_str().unwrap()), "{message}");
    // Every later append is refused, even though the disk would now take it.
    assert!(matches!(
        wal.append(vec![op(3)]),
        Err(LogError::Poisoned(_))
    ));
    assert!(wal.poisoned().is_some());
    drop(wal);
    // After a restart the log is whatever is on disk, numbered without reuse.
    let (wal, _) = open(dir.path());
    let next = wal.append(vec![op(4)]).unwrap()[0].seq;
    let all = seqs(&wal);
    assert_eq!(*all.last().unwrap(), next);
    assert_eq!(all, (1..=next).collect::<Vec<_>>());
    assert_eq!(wal.read_after(next - 1).unwrap()[0].op, op(4));
}

#[test]
fn a_failed_write_that_cannot_be_cut_back_poisons_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path());
    wal.append(vec![op(1)]).unwrap();
    {
        let mut faults = wal.faults();
        faults.fail_write_after = Some(5);
        faults.fail_cut = true;
    }
    assert!(matches!(wal.append(vec![op(2)]), Err(LogError::Io { .. })));
    // Appending after the partial frame would make this record unreadable.
    assert!(matches!(
        wal.append(vec![op(3)]),
        Err(LogError::Poisoned(_))
    ));
    drop(wal);
    let (wal, report) = open(dir.path());
    assert_eq!(report.truncated_bytes, 5);
    assert_eq!(seqs(&wal), vec![1]);
}

#[test]
fn a_missing_segment_between_two_others_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path());
    wal.append(vec![op(1)]).unwrap();
    wal.truncate_before(0).unwrap(); // rotates: segments 1 and 2
    wal.append(vec![op(2)]).unwrap();
    wal.truncate_before(0).unwrap(); // segments 1, 2 and 3
    wal.append(vec![op(3)]).unwrap();
    drop(wal);
    let segments = list_segments(dir.path()).unwrap();
    assert_eq!(segments.len(), 3);
    fs::remove_file(&segments[1].1).unwrap();
    let err = FileWal::open(dir.path(), FsyncPolicy::Always, 0)
        .err()
        .expect("gap");
    assert!(err.to_string().contains("records are missing"), "{err}");
}

#[test]
fn new_segments_carry_the_format_header() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path());
    wal.append(vec![op(1)]).unwrap();
    let seg = list_segments(dir.path()).unwrap()[0].1.clone();
    let bytes = fs::read(seg).unwrap();
    assert_eq!(&bytes[..HEADER], SEGMENT_MAGIC);
    // The payload starts with the format version.
    assert_eq!(bytes[HEADER + 8], crate::format::VERSION);
}

#[test]
fn numbering_continues_from_the_snapshot_floor() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = FileWal::open(dir.path(), FsyncPolicy::Always, 41).unwrap();
    assert_eq!(wal.append(vec![op(1)]).unwrap()[0].seq, 42);
}
