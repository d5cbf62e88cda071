//! Unit tests of the worker configuration contract: parsing, defaults and validation.
use super::*;

#[test]
fn empty_file_gives_defaults() {
    assert_eq!(
        WorkerConfig::from_yaml("").unwrap(),
        WorkerConfig::default()
    );
}

#[test]
fn a_zero_limit_is_refused_naming_it() {
    let config = WorkerConfig::from_yaml("limits:\n  request_timeout_seconds: 0\n").unwrap();
    let err = config.validate().unwrap_err();
    assert!(
        err.to_string().contains("limits.request_timeout_seconds"),
        "{err}"
    );
    let config = WorkerConfig::from_yaml("limits:\n  max_top_k: 0\n").unwrap();
    assert!(config
        .validate()
        .unwrap_err()
        .to_string()
        .contains("limits.max_top_k"));
    assert!(WorkerConfig::default().validate().is_ok());
}

#[test]
fn unknown_key_is_an_error_that_names_it() {
    let err = WorkerConfig::from_yaml("listen: 0.0.0.0:8080\nlisten_adress: x\n").unwrap_err();
    assert!(err.to_string().contains("listen_adress"), "{err}");
    let err = WorkerConfig::from_yaml("embedding:\n  devise: cpu\n").unwrap_err();
    assert!(err.to_string().contains("devise"), "{err}");
}

#[test]
fn rendered_yaml_reads_back_identically() {
    let mut cfg = WorkerConfig {
        redis: Some(RedisConfig {
            mode: RedisMode::Cluster,
            nodes: vec!["a:6379".into(), "b:6379".into()],
            password_env: Some("KB_REDIS_PASSWORD".into()),
            tls: true,
            key_prefix: "kb:docs".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    cfg.embedding.precision = Precision::Fp16;
    assert_eq!(WorkerConfig::from_yaml(&cfg.to_yaml()).unwrap(), cfg);
}

#[test]
fn env_overrides_win_and_bad_numbers_are_named() {
    let mut cfg = WorkerConfig::default();
    cfg.apply_env([
        ("KB_LISTEN".to_string(), "0.0.0.0:1".to_string()),
        ("KB_DEVICE".to_string(), "cuda:0,1".to_string()),
    ])
    .unwrap();
    assert_eq!(cfg.listen, "0.0.0.0:1");
    assert_eq!(cfg.embedding.device, "cuda:0,1");
    let err = cfg
        .apply_env([("KB_MAX_BATCH_TOKENS".to_string(), "lots".to_string())])
        .unwrap_err();
    assert!(err.to_string().contains("KB_MAX_BATCH_TOKENS"));
    assert_eq!(cfg.on_model_mismatch, crate::OnModelMismatch::Refuse);
    cfg.apply_env([("KB_ON_MODEL_MISMATCH".to_string(), "exit".to_string())])
        .unwrap();
    assert_eq!(cfg.on_model_mismatch, crate::OnModelMismatch::Exit);
    cfg.apply_env([("KB_ON_MODEL_MISMATCH".to_string(), "reindex".to_string())])
        .unwrap();
    assert_eq!(cfg.on_model_mismatch, crate::OnModelMismatch::Reindex);
    let err = cfg
        .apply_env([("KB_ON_MODEL_MISMATCH".to_string(), "ignore".to_string())])
        .unwrap_err();
    assert!(err.to_string().contains("refuse, exit or reindex"), "{err}");
    cfg.apply_env([
        (
            "KB_MODEL_REF".to_string(),
            "image:/opt/kb/model".to_string(),
        ),
        (
            "KB_WANTED_MODEL_FILE".to_string(),
            "/etc/kb/wanted/model".to_string(),
        ),
    ])
    .unwrap();
    assert_eq!(cfg.model_ref.as_deref(), Some("image:/opt/kb/model"));
    assert_eq!(
        cfg.wanted_model_file.as_deref(),
        Some(std::path::Path::new("/etc/kb/wanted/model"))
    );
    // Environment only: never in a file the operator writes (older workers refuse
    // unknown keys).
    assert!(!cfg.to_yaml().contains("model_ref"), "{}", cfg.to_yaml());
}

#[test]
fn overlap_must_be_smaller_than_chunk() {
    let mut cfg = WorkerConfig::default();
    cfg.chunking.overlap = cfg.chunking.max_tokens;
    assert!(cfg.validate().unwrap_err().to_string().contains("overlap"));
}

#[test]
fn standalone_redis_needs_url() {
    let cfg = WorkerConfig {
        redis: Some(RedisConfig::default()),
        ..Default::default()
    };
    assert!(cfg
        .validate()
        .unwrap_err()
        .to_string()
        .contains("redis.url"));
}

#[test]
fn the_cpu_screen_is_none_or_bf16() {
    let config = WorkerConfig::from_yaml("index:\n  cpu_screen: bf16\n").unwrap();
    assert_eq!(config.index.cpu_screen, CpuScreen::Bf16);
    assert_eq!(WorkerConfig::default().index.cpu_screen, CpuScreen::None);
    let err = WorkerConfig::from_yaml("index:\n  cpu_screen: fp8\n").unwrap_err();
    assert!(err.to_string().contains("none"), "{err}");
}

#[test]
fn the_lexical_index_is_standard_unless_set() {
    assert_eq!(WorkerConfig::default().index.lexical, Lexical::Standard);
    for (text, want) in [
        ("off", Lexical::Off),
        ("standard", Lexical::Standard),
        ("english", Lexical::English),
    ] {
        let config = WorkerConfig::from_yaml(&format!("index:\n  lexical: {text}\n")).unwrap();
        assert_eq!(config.index.lexical, want);
    }
    let err = WorkerConfig::from_yaml("index:\n  lexical: french\n").unwrap_err();
    assert!(err.to_string().contains("french"), "{err}");
}

#[test]
fn prefixes_keep_their_trailing_space_and_empty_differs_from_unset() {
    let cfg = WorkerConfig::from_yaml(
        "embedding:\n  query_prefix: \"query: \"\n  document_prefix: \"\"\n",
    )
    .unwrap();
    assert_eq!(cfg.embedding.query_prefix.as_deref(), Some("query: "));
    assert_eq!(cfg.embedding.document_prefix.as_deref(), Some(""));
    assert_eq!(WorkerConfig::from_yaml(&cfg.to_yaml()).unwrap(), cfg);
    let unset = WorkerConfig::default();
    assert_eq!(unset.embedding.query_prefix, None);
    assert!(
        !unset.to_yaml().contains("prefix"),
        "unset prefixes are not rendered"
    );
}
