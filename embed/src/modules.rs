//! The sentence-transformers modules after the encoder and the model's own prompts:
//! `modules.json`, the Pooling module's `config.json` and `config_sentence_transformers.json`.
//!
//! Both spellings sentence-transformers has used are read: module types
//! `sentence_transformers.models.Pooling` (2.x-5.x) and
//! `sentence_transformers.sentence_transformer.modules.pooling.Pooling` (6.x), pooling
//! modes as `pooling_mode_*` booleans (2.x-5.x) or one `pooling_mode` name (6.x).

use crate::model_config::read_json;
use crate::pooling::Pooling;
use crate::EmbedError;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// What follows the encoder, as the model directory declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    /// How token states become one vector.
    pub pooling: Pooling,
    /// Whether the pooled vector is L2-normalised (a `Normalize` module follows pooling).
    pub normalize: bool,
    /// `include_prompt` of the pooling config: `false` leaves prompt tokens out of pooling.
    pub include_prompt: bool,
    /// The width pooling declares (`word_embedding_dimension`), if it does.
    pub dimension: Option<i64>,
}

/// One entry of `modules.json`.
#[derive(Debug, Deserialize)]
struct ModuleEntry {
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

/// `1_Pooling/config.json`, in either spelling.
#[derive(Debug, Deserialize)]
struct PoolingFile {
    pooling_mode: Option<ModeField>,
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
    word_embedding_dimension: Option<i64>,
    embedding_dimension: Option<i64>,
    #[serde(default = "yes")]
    include_prompt: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ModeField {
    One(String),
    Several(Vec<String>),
}

impl PoolingFile {
    /// The modes set, in sentence-transformers' order: `pooling_mode` when present (the
    /// booleans are then ignored, as sentence-transformers ignores them), else the booleans.
    fn modes(&self) -> Vec<String> {
        match &self.pooling_mode {
            Some(ModeField::One(mode)) => vec![mode.clone()],
            Some(ModeField::Several(modes)) => modes.clone(),
            None => [
                (self.pooling_mode_cls_token, "cls"),
                (self.pooling_mode_max_tokens, "max"),
                (self.pooling_mode_mean_tokens, "mean"),
                (
                    self.pooling_mode_mean_sqrt_len_tokens,
                    "mean_sqrt_len_tokens",
                ),
                (self.pooling_mode_weightedmean_tokens, "weightedmean"),
                (self.pooling_mode_lasttoken, "lasttoken"),
            ]
            .into_iter()
            .filter(|(set, _)| *set)
            .map(|(_, name)| name.to_string())
            .collect(),
        }
    }
}

/// The one pooling mode of a pooling config (`file` names it in errors).
fn pooling_of(cfg: &PoolingFile, file: &str) -> Result<Pooling, EmbedError> {
    let modes = cfg.modes();
    let mode = match modes.as_slice() {
        [one] => one.as_str(),
        [] => {
            return Err(EmbedError::ModelLoad(format!(
                "{file}: no pooling mode is set (set exactly one of pooling_mode_cls_token, \
                 pooling_mode_mean_tokens, pooling_mode_max_tokens, \
                 pooling_mode_mean_sqrt_len_tokens)"
            )))
        }
        several => {
            return Err(EmbedError::ModelLoad(format!(
                "{file}: several pooling modes at once ({}) concatenate their vectors, which \
                 is not supported; set exactly one",
                several.join(", ")
            )))
        }
    };
    match mode {
        "cls" => Ok(Pooling::Cls),
        "mean" => Ok(Pooling::Mean),
        "max" => Ok(Pooling::Max),
        "mean_sqrt_len_tokens" => Ok(Pooling::MeanSqrtLen),
        other => Err(EmbedError::ModelLoad(format!(
            "{file}: pooling mode {other:?} is not supported (cls, mean, max and \
             mean_sqrt_len_tokens are)"
        ))),
    }
}

/// The last part of a module type (`sentence_transformers.models.Pooling` -> `Pooling`).
fn class_name(kind: &str) -> &str {
    kind.rsplit('.').next().unwrap_or(kind)
}

/// Where the Pooling module's files are, and whether a `Normalize` module follows it.
/// Without `modules.json` (a directory not saved by sentence-transformers): `1_Pooling`,
/// normalised, as the engine always did.
fn pipeline(model_dir: &Path) -> Result<(String, bool), EmbedError> {
    let path = model_dir.join("modules.json");
    if !path.exists() {
        return Ok(("1_Pooling".into(), true));
    }
    let modules: Vec<ModuleEntry> = read_json(&path)?;
    let classes: Vec<&str> = modules.iter().map(|m| class_name(&m.kind)).collect();
    let (pooling, normalize) = match classes.as_slice() {
        ["Transformer", "Pooling"] => (&modules[1], false),
        ["Transformer", "Pooling", "Normalize"] => (&modules[1], true),
        _ => {
            let listed: Vec<&str> = modules.iter().map(|m| m.kind.as_str()).collect();
            return Err(EmbedError::ModelLoad(format!(
                "modules.json: the modules {listed:?} are not supported; a model must be a \
                 Transformer, then a Pooling, then optionally a Normalize module"
            )));
        }
    };
    if !modules[0].path.is_empty() {
        return Err(EmbedError::ModelLoad(format!(
            "modules.json: the Transformer module is in {:?}; its files (config.json, \
             model.safetensors, tokenizer.json) must be at the model directory's root",
            modules[0].path
        )));
    }
    Ok((pooling.path.clone(), normalize))
}

/// Reads `modules.json` and the Pooling module's config.
pub fn read_head(model_dir: &Path) -> Result<Head, EmbedError> {
    let (pooling_dir, normalize) = pipeline(model_dir)?;
    let file = format!("{pooling_dir}/config.json");
    let cfg: PoolingFile = read_json(&model_dir.join(&pooling_dir).join("config.json"))?;
    Ok(Head {
        pooling: pooling_of(&cfg, &file)?,
        normalize,
        include_prompt: cfg.include_prompt,
        dimension: cfg.word_embedding_dimension.or(cfg.embedding_dimension),
    })
}

/// The prompts a model declares for queries and documents.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Prompts {
    /// `prompts.query`; empty when none.
    pub query: String,
    /// `prompts.document`, else `prompts.passage`, else `prompts.corpus` (the order of
    /// sentence-transformers' `encode_document`); empty when none.
    pub document: String,
}

#[derive(Debug, Deserialize)]
struct StConfig {
    #[serde(default)]
    prompts: BTreeMap<String, String>,
}

/// The prompts of `config_sentence_transformers.json`; none when the file is absent.
pub fn read_prompts(model_dir: &Path) -> Result<Prompts, EmbedError> {
    let path = model_dir.join("config_sentence_transformers.json");
    if !path.exists() {
        return Ok(Prompts::default());
    }
    let cfg: StConfig = read_json(&path)?;
    let prompt = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| cfg.prompts.get(*n).cloned())
            .unwrap_or_default()
    };
    Ok(Prompts {
        query: prompt(&["query"]),
        document: prompt(&["document", "passage", "corpus"]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pooling(json: &str) -> Result<Pooling, EmbedError> {
        pooling_of(
            &serde_json::from_str(json).unwrap(),
            "1_Pooling/config.json",
        )
    }

    #[test]
    fn each_single_mode_is_read_in_both_spellings() {
        for (legacy, name, mode) in [
            ("pooling_mode_cls_token", "cls", Pooling::Cls),
            ("pooling_mode_mean_tokens", "mean", Pooling::Mean),
            ("pooling_mode_max_tokens", "max", Pooling::Max),
            (
                "pooling_mode_mean_sqrt_len_tokens",
                "mean_sqrt_len_tokens",
                Pooling::MeanSqrtLen,
            ),
        ] {
            let json = format!(r#"{{"word_embedding_dimension": 8, "{legacy}": true}}"#);
            assert_eq!(pooling(&json).unwrap(), mode);
            let json = format!(r#"{{"embedding_dimension": 8, "pooling_mode": "{name}"}}"#);
            assert_eq!(pooling(&json).unwrap(), mode);
            let json = format!(r#"{{"pooling_mode": ["{name}"]}}"#);
            assert_eq!(pooling(&json).unwrap(), mode);
            assert_eq!(mode.name(), name);
        }
        // `pooling_mode` wins over the booleans, as in sentence-transformers.
        let json = r#"{"pooling_mode": "cls", "pooling_mode_mean_tokens": true}"#;
        assert_eq!(pooling(json).unwrap(), Pooling::Cls);
    }

    #[test]
    fn no_mode_several_modes_and_unsupported_modes_are_refused_naming_the_file() {
        for (json, says) in [
            (r#"{"pooling_mode_mean_tokens": false}"#, "no pooling mode"),
            (
                r#"{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": true}"#,
                "several pooling modes at once (cls, mean)",
            ),
            (r#"{"pooling_mode": ["max", "mean"]}"#, "(max, mean)"),
            (r#"{"pooling_mode_lasttoken": true}"#, "\"lasttoken\""),
            (r#"{"pooling_mode": "weightedmean"}"#, "\"weightedmean\""),
        ] {
            let err = pooling(json).unwrap_err().to_string();
            assert!(
                err.contains("1_Pooling/config.json") && err.contains(says),
                "{json}: {err}"
            );
        }
    }

    fn model_dir(modules: Option<&str>, pooling: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("1_Pooling")).unwrap();
        std::fs::write(dir.path().join("1_Pooling/config.json"), pooling).unwrap();
        if let Some(modules) = modules {
            std::fs::write(dir.path().join("modules.json"), modules).unwrap();
        }
        dir
    }

    const MODULES: &str = r#"[
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}
    ]"#;

    #[test]
    fn normalisation_follows_modules_json_and_defaults_to_on_without_it() {
        let mean = r#"{"pooling_mode_mean_tokens": true, "word_embedding_dimension": 8}"#;
        let head = read_head(model_dir(None, mean).path()).unwrap();
        assert!(head.normalize && head.include_prompt);
        assert_eq!((head.pooling, head.dimension), (Pooling::Mean, Some(8)));
        assert!(
            !read_head(model_dir(Some(MODULES), mean).path())
                .unwrap()
                .normalize
        );
        // sentence-transformers 6 spells the types by their new module paths.
        let current = r#"[
            {"path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"},
            {"path": "1_Pooling", "type": "sentence_transformers.sentence_transformer.modules.pooling.Pooling"},
            {"path": "2_Normalize", "type": "sentence_transformers.base.modules.normalize.Normalize"}
        ]"#;
        let cls = r#"{"pooling_mode": "cls", "include_prompt": false}"#;
        let head = read_head(model_dir(Some(current), cls).path()).unwrap();
        assert!(head.normalize && !head.include_prompt);
        assert_eq!(head.pooling, Pooling::Cls);
    }

    #[test]
    fn other_modules_are_refused_naming_them() {
        let dense = MODULES.replace(
            "\n    ]",
            r#", {"path": "2_Dense", "type": "sentence_transformers.models.Dense"}]"#,
        );
        let err = read_head(model_dir(Some(&dense), "{}").path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("modules.json") && err.contains("sentence_transformers.models.Dense"),
            "{err}"
        );
    }

    #[test]
    fn prompts_come_from_the_sentence_transformers_config() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_prompts(dir.path()).unwrap(), Prompts::default());
        let config = r#"{"prompts": {"query": "query: ", "passage": "passage: "},
            "default_prompt_name": null}"#;
        std::fs::write(dir.path().join("config_sentence_transformers.json"), config).unwrap();
        let prompts = read_prompts(dir.path()).unwrap();
        assert_eq!(
            (prompts.query.as_str(), prompts.document.as_str()),
            ("query: ", "passage: ")
        );
    }
}
