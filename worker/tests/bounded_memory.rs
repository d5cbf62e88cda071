//! Snapshots (written, verified, received, loaded), compaction and the replay of the log
//! at start-up hold no second copy of a collection's vectors in
//! memory: a worker sized for its index (the growth checks let the index use the pod's
//! memory up to a small headroom) must not be OOM-killed the next time it snapshots,
//! restarts or compacts.
//!
//! A counting global allocator measures the host heap above what was in use before each
//! step and above what the step keeps (the loaded index's rows). Tensor storage is
//! allocated by libtorch, not through Rust's allocator, so what is measured is exactly
//! the transient host copies.

use kb_worker::index::Index;
use kb_worker::log::{ChunkRecord, Metadata, Metric, Op, Record};
use kb_worker::snapshot;
use kb_worker::store::Store;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use tch::Device;

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let now = CURRENT.fetch_add(bytes, Ordering::SeqCst) + bytes;
    PEAK.fetch_max(now, Ordering::SeqCst);
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counters only
// observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::SeqCst);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            CURRENT.fetch_sub(layout.size(), Ordering::SeqCst);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The counters are global: one measuring test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs `f`; returns its result, the peak heap above the start, and the heap it kept.
fn measured<T>(f: impl FnOnce() -> T) -> (T, usize, usize) {
    let base = CURRENT.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let out = f();
    let peak = PEAK.load(Ordering::SeqCst) - base;
    let kept = CURRENT.load(Ordering::SeqCst).saturating_sub(base);
    (out, peak, kept)
}

const DIM: usize = 128;
const DOCS: usize = 10_000;
const CHUNKS: usize = 10;

fn chunks_of(d: usize) -> Vec<ChunkRecord> {
    (0..CHUNKS)
        .map(|c| ChunkRecord {
            chunk_id: format!("{d}#{c}"),
            text: format!("t{d}"),
            metadata: Metadata::new(),
            vector: (0..DIM)
                .map(|i| ((d + c * 3 + i) % 17) as f32 + 0.5)
                .collect(),
        })
        .collect()
}

fn build() -> Index {
    let mut index = Index::new(Device::Cpu);
    let mut seq = 0;
    let mut apply = |index: &mut Index, op| {
        seq += 1;
        index.apply(&Record { seq, op }).unwrap();
    };
    apply(
        &mut index,
        Op::CreateCollection {
            collection: "c".into(),
            dim: DIM,
            metric: Metric::Cosine,
        },
    );
    for d in 0..DOCS {
        let op = Op::Upsert {
            collection: "c".into(),
            doc_id: format!("d{d}"),
            chunks: chunks_of(d),
        };
        apply(&mut index, op);
    }
    index
}

#[test]
fn snapshots_and_compaction_copy_no_whole_collection() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut index = build();
    let vectors = DOCS * CHUNKS * DIM * 4; // 51 MB of fp32 on the host
    let bound = vectors / 4;
    let dir = tempfile::tempdir().unwrap();

    let (path, peak, _) = measured(|| snapshot::save(&index, dir.path(), 1).unwrap());
    eprintln!("vectors {vectors} B; save: peak {peak} B");
    assert!(
        peak < bound,
        "saving a snapshot of {vectors} bytes of vectors allocated {peak} bytes at once"
    );
    assert!(std::fs::metadata(&path).unwrap().len() > vectors as u64);

    // Verifying it (backups, restores) and receiving it in pieces (a replica's bootstrap
    // download, a backup to a folder) hold none of it either.
    let (sequence, peak, _) = measured(|| snapshot::verify_file(&path).unwrap());
    assert_eq!(sequence, index.applied());
    eprintln!("verify: peak {peak} B");
    assert!(peak < bound, "verifying allocated {peak} bytes at once");
    let copies = tempfile::tempdir().unwrap();
    let (_, peak, _) = measured(|| {
        use std::io::Read;
        let mut incoming = snapshot::Incoming::create(copies.path()).unwrap();
        let mut file = std::fs::File::open(&path).unwrap();
        let mut piece = vec![0u8; 64 << 10];
        while let n @ 1.. = file.read(&mut piece).unwrap() {
            incoming.write(&piece[..n]).unwrap();
        }
        incoming
            .finish(|c| snapshot::file_name(c.sequence))
            .unwrap()
    });
    eprintln!("receive: peak {peak} B");
    assert!(peak < bound, "receiving allocated {peak} bytes at once");

    let (loaded, peak, kept) = measured(|| snapshot::load_newest(dir.path(), Device::Cpu));
    let loaded = loaded.unwrap().expect("a snapshot");
    assert_eq!(loaded.get("c").unwrap().stats().chunks, DOCS * CHUNKS);
    eprintln!("load: peak {peak} B, kept {kept} B");
    assert!(
        peak - kept < bound,
        "loading allocated {peak} bytes at once and kept {kept} (the rows)"
    );
    drop(loaded);

    // Deleting a third of the documents compacts the collection (over a quarter of the
    // rows are tombstones) when the last of these deletes lands.
    let deletes = DOCS / 3;
    let (_, peak, _) = measured(|| {
        for d in 0..deletes {
            let op = Op::Delete {
                collection: "c".into(),
                doc_id: format!("d{d}"),
            };
            let seq = index.applied() + 1;
            index.apply(&Record { seq, op }).unwrap();
        }
    });
    let stats = index.get("c").unwrap().stats();
    eprintln!("deletes and compaction: peak {peak} B");
    assert!(stats.tombstones < deletes * CHUNKS, "compacted: {stats:?}");
    assert!(
        peak < bound,
        "compacting {} live rows allocated {peak} bytes at once",
        stats.chunks
    );
}

#[test]
fn replaying_the_log_at_start_up_holds_one_record_at_a_time() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = kb_config::WorkerConfig::default();
    cfg.snapshot.every_records = 0; // everything stays in the log
    cfg.log.fsync = kb_config::FsyncPolicy::Never;
    {
        let (store, _) = Store::open(dir.path(), &cfg, Device::Cpu).unwrap();
        let create = Op::CreateCollection {
            collection: "c".into(),
            dim: DIM,
            metric: Metric::Cosine,
        };
        store.write(vec![create]).unwrap();
        for batch in (0..DOCS).collect::<Vec<_>>().chunks(100) {
            let ops = batch
                .iter()
                .map(|&d| Op::Upsert {
                    collection: "c".into(),
                    doc_id: format!("d{d}"),
                    chunks: chunks_of(d),
                })
                .collect();
            store.write(ops).unwrap();
        }
    }
    let vectors = DOCS * CHUNKS * DIM * 4;
    let (opened, peak, kept) = measured(|| Store::open(dir.path(), &cfg, Device::Cpu).unwrap());
    let (store, recovery) = opened;
    assert_eq!(recovery.replayed, DOCS + 1);
    assert_eq!(
        store.index().get("c").unwrap().stats().chunks,
        DOCS * CHUNKS
    );
    eprintln!("log replay: peak {peak} B, kept {kept} B (vectors {vectors} B)");
    assert!(
        peak - kept < vectors / 4,
        "replaying the log allocated {peak} bytes at once and kept {kept}"
    );
}
