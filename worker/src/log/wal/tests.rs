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

/// Appends `ops` one record per append, so each is its own frame.
fn one_by_one(wal: &FileWal, n: usize) {
    for i in 1..=n {
        wal.append(vec![op(i)]).unwrap();
    }
}

/// Offset of each frame of a version-2 segment.
fn frame_offsets(bytes: &[u8]) -> Vec<usize> {
    let (mut at, mut offsets) = (HEADER, Vec::new());
    while at < bytes.len() {
        offsets.push(at);
        at += HEADER + u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    }
    offsets
}

#[test]
fn a_failed_rotation_removes_its_file_and_the_next_start_opens() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path());
    wal.append(vec![op(1)]).unwrap();
    wal.faults().fail_rotate = true;
    let err = wal.truncate_before(1).unwrap_err();
    assert!(
        matches!(&err, LogError::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull),
        "{err}"
    );
    assert_eq!(list_segments(dir.path()).unwrap().len(), 1, "no file left");
    // Appends go on in the current segment, and survive a restart.
    one_by_one(&wal, 2);
    drop(wal);
    let (wal, _) = open(dir.path());
    assert_eq!(seqs(&wal), vec![1, 2, 3]);
}

#[test]
fn an_empty_trailing_segment_left_by_a_crash_during_rotation_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path());
    one_by_one(&wal, 3);
    drop(wal);
    // A crash while segment 2 was being created (before its header was written), after
    // which records 2 and 3 went on in segment 1: its empty file is all that is left.
    for leftover in [&b""[..], &SEGMENT_MAGIC[..3]] {
        fs::write(segment_path(dir.path(), 2), leftover).unwrap();
        let (wal, report) = open(dir.path());
        assert_eq!(report.records, 3);
        assert_eq!(seqs(&wal), vec![1, 2, 3]);
        assert_eq!(list_segments(dir.path()).unwrap().len(), 1);
    }
}

#[test]
fn a_bad_frame_followed_by_later_records_refuses_to_start_and_keeps_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path());
    one_by_one(&wal, 6);
    drop(wal);
    let seg = list_segments(dir.path()).unwrap()[0].1.clone();
    let good = fs::read(&seg).unwrap();
    let third = frame_offsets(&good)[2];
    // A flipped payload byte (length intact), then a flipped length (no way to step over
    // the frame: later frames must be found by scanning).
    for (at, what) in [(third + HEADER + 3, "payload"), (third + 2, "length")] {
        let mut bad = good.clone();
        bad[at] ^= 0x5a;
        fs::write(&seg, &bad).unwrap();
        let err = FileWal::open(dir.path(), FsyncPolicy::Always, 0)
            .err()
            .unwrap_or_else(|| panic!("{what}: opened"));
        let message = err.to_string();
        assert!(matches!(err, LogError::Corrupt(_)), "{what}: {message}");
        assert!(
            message.contains("after sequence 2") && message.contains("records 4..=6"),
            "{what}: {message}"
        );
        assert_eq!(fs::read(&seg).unwrap(), bad, "{what}: the file is kept");
    }
}

#[test]
fn zeros_after_the_last_frame_are_a_torn_tail_not_a_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path());
    one_by_one(&wal, 2);
    drop(wal);
    let seg = list_segments(dir.path()).unwrap()[0].1.clone();
    let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&[0u8; 4096]).unwrap();
    drop(f);
    let (wal, report) = open(dir.path());
    assert_eq!(report.truncated_bytes, 4096);
    assert_eq!(seqs(&wal), vec![1, 2]);
}

#[test]
fn a_snapshot_ahead_of_the_log_continues_in_a_segment_after_it() {
    // The log lost records 4..=10 (fsync: never and a power loss); the snapshot has them.
    for empty_current in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = open(dir.path());
        one_by_one(&wal, 3);
        if empty_current {
            wal.truncate_before(0).unwrap(); // the open segment is now an empty one
        }
        drop(wal);
        let (wal, _) = FileWal::open(dir.path(), FsyncPolicy::Always, 10).unwrap();
        assert_eq!(wal.append(vec![op(11)]).unwrap()[0].seq, 11);
        drop(wal);
        let (wal, report) = FileWal::open(dir.path(), FsyncPolicy::Always, 10)
            .unwrap_or_else(|e| panic!("empty current segment {empty_current}: {e}"));
        assert_eq!(report.records, 4);
        let after: Vec<Seq> = wal.read_after(10).unwrap().iter().map(|r| r.seq).collect();
        assert_eq!(after, vec![11]);
        assert_eq!(wal.append(vec![op(12)]).unwrap()[0].seq, 12);
        // Without the snapshot the gap is a loss again.
        drop(wal);
        let err = FileWal::open(dir.path(), FsyncPolicy::Always, 3).err();
        assert!(
            err.is_some_and(|e| e.to_string().contains("records are missing")),
            "a lower floor must not hide the gap"
        );
    }
}

#[test]
fn opening_a_new_wal_directory_syncs_its_parent() {
    let root = tempfile::tempdir().unwrap();
    crate::durable::synced::take();
    let _wal = open(&root.path().join("wal"));
    assert!(crate::durable::synced::take().contains(&root.path().to_path_buf()));
}
