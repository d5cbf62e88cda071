use super::super::{Index, IndexError};
use crate::log::{Binding, ChunkRecord, Metric, ModelIdentity, Op, Record};
use std::path::Path;
use tch::Device;

fn model(digest: &str) -> Binding {
    Binding::Model(ModelIdentity {
        name: format!("model-{digest}"),
        digest: digest.into(),
        pooling: "mean".into(),
        normalize: true,
        query_prefix: String::new(),
        document_prefix: String::new(),
        dim: 2,
        precision_class: "float".into(),
    })
}

fn create(collection: &str) -> Op {
    Op::CreateCollection {
        collection: collection.into(),
        dim: 2,
        metric: Metric::Cosine,
    }
}

fn bind(collection: &str, binding: Binding) -> Op {
    Op::BindCollection {
        collection: collection.into(),
        binding,
    }
}

fn alias(alias: &str, collection: &str) -> Op {
    Op::SetAlias {
        alias: alias.into(),
        collection: collection.into(),
    }
}

/// Applies `ops` in order after the index's last record; the outcome of each.
fn apply(index: &mut Index, ops: Vec<Op>) -> Vec<Result<(), IndexError>> {
    ops.into_iter()
        .map(|op| {
            let seq = index.applied() + 1;
            index.apply(&Record { seq, op })
        })
        .collect()
}

#[test]
fn the_first_binding_holds_and_another_model_is_refused_before_and_after_logging() {
    let mut index = Index::new(Device::Cpu);
    let results = apply(&mut index, vec![create("c"), bind("c", model("sha256:a"))]);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    // The same model again (another name, same vectors) is accepted.
    let mut renamed = model("sha256:a");
    if let Binding::Model(m) = &mut renamed {
        m.name = "mounted elsewhere".into();
    }
    index.check(&bind("c", renamed)).unwrap();
    // Another model is refused by the check that runs before a write is logged...
    let other = bind("c", model("sha256:b"));
    let err = index.check(&other).unwrap_err();
    assert!(
        matches!(&err, IndexError::ModelMismatch { collection, stored, given }
            if collection == "c" && stored.contains("model-sha256:a") && given.contains("model-sha256:b")),
        "{err}"
    );
    assert!(index.check_batch(std::slice::from_ref(&other)).is_err());
    assert!(index.check(&bind("c", Binding::External)).is_err());
    // ...and, were it logged anyway (a race between two workers), applies as a no-op.
    let applied = apply(&mut index, vec![other]);
    assert!(matches!(applied[0], Err(IndexError::ModelMismatch { .. })));
    assert_eq!(index.binding("c"), Some(&model("sha256:a")));
    assert_eq!(index.applied(), 3, "the record still advances the sequence");
}

#[test]
fn a_binding_in_the_batch_that_creates_the_collection_is_checked_and_dropping_forgets_it() {
    let mut index = Index::new(Device::Cpu);
    index
        .check_batch(&[create("new"), bind("new", model("sha256:a"))])
        .unwrap();
    assert!(matches!(
        index.check(&bind("missing", model("sha256:a"))),
        Err(IndexError::NoSuchCollection(_))
    ));
    apply(&mut index, vec![create("c"), bind("c", model("sha256:a"))]);
    apply(
        &mut index,
        vec![
            Op::DropCollection {
                collection: "c".into(),
            },
            create("c"),
            bind("c", model("sha256:b")),
        ],
    );
    assert_eq!(index.binding("c"), Some(&model("sha256:b")));
}

#[test]
fn aliases_resolve_swap_and_never_shadow_a_collection() {
    let mut index = Index::new(Device::Cpu);
    apply(
        &mut index,
        vec![create("v1"), create("v2"), alias("docs", "v1")],
    );
    assert_eq!(index.catalog().resolve("docs"), "v1");
    assert_eq!(index.catalog().resolve("v2"), "v2");
    apply(&mut index, vec![alias("docs", "v2")]);
    assert_eq!(
        index.catalog().resolve("docs"),
        "v2",
        "swapped in one record"
    );
    assert_eq!(index.catalog().aliases_of("v2"), vec!["docs".to_string()]);
    // An alias cannot take a collection's name, point at an alias or at nothing, and a
    // collection cannot take an alias's name.
    for (op, want) in [
        (alias("v1", "v2"), "is a collection"),
        (alias("other", "docs"), "is an alias itself"),
        (create("docs"), "is an alias"),
    ] {
        let err = index.check(&op).unwrap_err();
        assert!(
            matches!(&err, IndexError::NameTaken(m) if m.contains(want)),
            "{op:?}: {err}"
        );
    }
    assert!(index.check_batch(&[create("docs")]).is_err());
    assert!(matches!(
        index.check(&alias("x", "missing")),
        Err(IndexError::NoSuchCollection(_))
    ));
    apply(
        &mut index,
        vec![Op::DeleteAlias {
            alias: "docs".into(),
        }],
    );
    assert_eq!(index.catalog().resolve("docs"), "docs");
    index.check(&create("docs")).unwrap();
}

#[test]
fn snapshots_carry_bindings_and_aliases_and_keep_the_older_format_without_them() {
    let mut index = Index::new(Device::Cpu);
    let row = ChunkRecord {
        chunk_id: "d#0".into(),
        text: "text".into(),
        metadata: Default::default(),
        vector: vec![1.0, 0.0],
    };
    let upsert = Op::Upsert {
        collection: "c".into(),
        doc_id: "d".into(),
        chunks: vec![row],
    };
    apply(&mut index, vec![create("c"), upsert]);
    let plain = crate::snapshot::encode(&index).unwrap();
    assert_eq!(
        plain[8],
        crate::format::VERSION,
        "no catalog: payload version 2"
    );
    apply(
        &mut index,
        vec![
            create("x"),
            bind("c", model("sha256:a")),
            bind("x", Binding::External),
            alias("docs", "c"),
        ],
    );
    let bytes = crate::snapshot::encode(&index).unwrap();
    assert_eq!(bytes[8], 3, "a catalog: payload version 3");
    let loaded = crate::snapshot::decode(&bytes, Device::Cpu, Path::new("test")).unwrap();
    assert_eq!(loaded.catalog(), index.catalog());
    assert_eq!(loaded.applied(), index.applied());
    let head = &bytes[..32];
    assert_eq!(crate::snapshot::sequence_of(head), Some(index.applied()));
    assert_eq!(loaded.get("c").unwrap().stats().chunks, 1);
    // Verified as the backups verify a file, too.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snap.kbsnap");
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(
        crate::snapshot::verify_file(&path).unwrap(),
        index.applied()
    );
}

fn upsert(collection: &str, doc: &str, text: &str, vector: [f32; 2]) -> Op {
    Op::Upsert {
        collection: collection.into(),
        doc_id: doc.into(),
        chunks: vec![ChunkRecord {
            chunk_id: format!("{doc}#0"),
            text: text.into(),
            metadata: Default::default(),
            vector: vector.to_vec(),
        }],
    }
}

fn start(source: &str, target: &str, binding: Binding) -> Op {
    Op::StartReindex {
        job: crate::log::ReindexJob {
            source: source.into(),
            target: target.into(),
            binding,
            owner: "w0".into(),
            started: 1,
        },
    }
}

#[test]
fn a_reindex_finishes_only_when_the_target_holds_the_sources_documents() {
    let mut index = Index::new(Device::Cpu);
    let results = apply(
        &mut index,
        vec![
            create("c"),
            bind("c", model("sha256:a")),
            upsert("c", "d1", "one", [1.0, 0.0]),
            upsert("c", "d2", "two", [0.0, 1.0]),
            alias("live", "c"),
            start("c", "c2", model("sha256:b")),
        ],
    );
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(index.binding("c2"), Some(&model("sha256:b")));
    assert_eq!(index.get("c2").unwrap().stats().documents, 0);
    // While it runs: the target takes no alias, neither collection can be dropped, and
    // another job of either is refused; all before logging.
    for op in [
        alias("other", "c2"),
        Op::DropCollection {
            collection: "c".into(),
        },
        Op::DropCollection {
            collection: "c2".into(),
        },
        start("c", "c3", model("sha256:b")),
        start("c2", "c3", model("sha256:b")),
        start("live", "c3", model("sha256:b")),
    ] {
        assert!(index.check(&op).is_err(), "{op:?} accepted");
    }
    // Not caught up: finishing is a no-op and the job goes on.
    let finish = Op::FinishReindex {
        target: "c2".into(),
    };
    apply(&mut index, vec![upsert("c2", "d1", "one", [0.5, 0.5])]);
    assert!(apply(&mut index, vec![finish.clone()])[0].is_ok());
    assert!(index.catalog().jobs.contains_key("c2"));
    assert!(index.get("c").is_some());
    // A document with other text is not caught up either.
    apply(&mut index, vec![upsert("c2", "d2", "TWO", [0.5, 0.5])]);
    apply(&mut index, vec![finish.clone()]);
    assert!(index.catalog().jobs.contains_key("c2"));
    // Same documents (other vectors): the source goes, its name and alias follow.
    apply(&mut index, vec![upsert("c2", "d2", "two", [0.5, 0.5])]);
    apply(&mut index, vec![finish]);
    assert!(index.catalog().jobs.is_empty());
    assert!(index.get("c").is_none());
    assert_eq!(index.catalog().resolve("c"), "c2");
    assert_eq!(index.catalog().resolve("live"), "c2");
    assert_eq!(index.binding("c"), None);
}

#[test]
fn cancelling_a_reindex_drops_the_target_and_keeps_the_source() {
    let mut index = Index::new(Device::Cpu);
    apply(
        &mut index,
        vec![
            create("c"),
            bind("c", model("sha256:a")),
            upsert("c", "d1", "one", [1.0, 0.0]),
            start("c", "c2", model("sha256:b")),
            upsert("c2", "d1", "one", [0.0, 1.0]),
            Op::CancelReindex {
                target: "c2".into(),
            },
        ],
    );
    assert!(index.get("c2").is_none());
    assert_eq!(index.binding("c2"), None);
    assert!(index.catalog().jobs.is_empty());
    assert_eq!(index.get("c").unwrap().stats().documents, 1);
    // A collection of client vectors, or a target taken, is refused.
    apply(
        &mut index,
        vec![
            create("ext"),
            bind("ext", Binding::External),
            create("taken"),
        ],
    );
    assert!(index.check(&start("ext", "e2", model("sha256:b"))).is_err());
    assert!(index
        .check(&start("c", "taken", model("sha256:b")))
        .is_err());
    assert!(index.check(&start("c", "c2", Binding::External)).is_err());
}

#[test]
fn jobs_travel_in_the_catalog_encoding_and_a_catalog_without_jobs_encodes_as_before() {
    let mut index = Index::new(Device::Cpu);
    apply(
        &mut index,
        vec![
            create("c"),
            bind("c", model("sha256:a")),
            start("c", "c2", model("sha256:b")),
        ],
    );
    let catalog = index.catalog().clone();
    let bytes = catalog.to_bytes().unwrap();
    assert_eq!(super::Catalog::from_bytes(&bytes).unwrap(), catalog);
    assert_eq!(super::Catalog::from_bytes(&bytes).unwrap().jobs.len(), 1);
    // Without jobs: the bytes of the first catalog version, which older builds read.
    let mut without = catalog.clone();
    without.jobs.clear();
    assert_eq!(
        without.to_bytes().unwrap(),
        postcard::to_allocvec(&(&without.bindings, &without.aliases)).unwrap()
    );
}
