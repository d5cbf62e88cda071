//! The files of a sentence-transformers model directory that shape the encoder.

use crate::modules::{read_head, read_prompts, Head, Prompts};
use crate::EmbedError;
use serde::Deserialize;
use std::path::Path;

/// The fields of a BERT `config.json` the encoder needs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BertConfig {
    /// Width of every hidden state.
    pub hidden_size: i64,
    /// Attention heads per layer; `hidden_size` must be a multiple of it.
    pub num_attention_heads: i64,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Epsilon of every LayerNorm.
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// Rows of the word embedding table.
    pub vocab_size: i64,
    /// Rows of the position embedding table: a hard limit on sequence length.
    pub max_position_embeddings: usize,
    /// Activation of the feed-forward block; only exact GELU is supported.
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    /// Only `absolute` position embeddings are supported.
    #[serde(default = "default_position_embedding_type")]
    pub position_embedding_type: String,
}

fn default_layer_norm_eps() -> f64 {
    1e-12
}

fn default_hidden_act() -> String {
    "gelu".into()
}

fn default_position_embedding_type() -> String {
    "absolute".into()
}

/// `sentence_bert_config.json`.
#[derive(Debug, Clone, Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

/// The one field of `tokenizer_config.json` read here.
#[derive(Debug, Clone, Deserialize)]
struct TokenizerConfig {
    /// Often a huge placeholder (1e30) meaning "no limit", hence a float.
    model_max_length: Option<f64>,
}

/// Everything read from the model directory except weights and tokenizer.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// The encoder's shape.
    pub bert: BertConfig,
    /// The model's own maximum input length, special tokens included.
    pub max_seq_len: usize,
    /// The name the model is known by: the title of its model card (`README.md`, as
    /// sentence-transformers exports it), else the directory's name.
    pub name: String,
    /// Pooling and normalisation after the encoder.
    pub head: Head,
    /// The prompts the model declares for queries and documents.
    pub prompts: Prompts,
}

/// The model card's title (`# all-MiniLM-L6-v2`), else the directory's own name.
fn model_name(model_dir: &Path) -> String {
    let from_card = std::fs::read_to_string(model_dir.join("README.md"))
        .ok()
        .and_then(|card| {
            card.lines()
                .find_map(|line| line.strip_prefix("# "))
                .map(|title| title.trim().to_string())
        })
        .filter(|title| !title.is_empty() && !title.contains(char::is_whitespace));
    from_card.unwrap_or_else(|| {
        model_dir
            .file_name()
            .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned())
    })
}

impl ModelSpec {
    /// Reads and checks `config.json`, `modules.json`, the pooling config,
    /// `sentence_bert_config.json`, `tokenizer_config.json` and
    /// `config_sentence_transformers.json`.
    pub fn read(model_dir: &Path) -> Result<ModelSpec, EmbedError> {
        let bert: BertConfig = read_json(&model_dir.join("config.json"))?;
        check_bert(&bert)?;
        let head = read_head(model_dir)?;
        if let Some(dim) = head.dimension.filter(|&d| d != bert.hidden_size) {
            return Err(EmbedError::ModelLoad(format!(
                "the pooling config declares {dim} dimensions, config.json's hidden_size is {}",
                bert.hidden_size
            )));
        }
        Ok(ModelSpec {
            max_seq_len: max_seq_len(model_dir, &bert)?,
            bert,
            name: model_name(model_dir),
            head,
            prompts: read_prompts(model_dir)?,
        })
    }
}

/// The model's input limit as sentence-transformers decides it: `max_seq_length` of
/// `sentence_bert_config.json`, else the tokenizer's `model_max_length` (the files
/// sentence-transformers 6 writes keep it there), never past the position table.
pub(crate) fn max_seq_len(model_dir: &Path, bert: &BertConfig) -> Result<usize, EmbedError> {
    let st_path = model_dir.join("sentence_bert_config.json");
    let tokenizer_path = model_dir.join("tokenizer_config.json");
    let declared = if st_path.exists() {
        read_json::<SentenceBertConfig>(&st_path)?.max_seq_length
    } else {
        None
    };
    let declared = match declared {
        Some(len) => Some(len),
        None if tokenizer_path.exists() => read_json::<TokenizerConfig>(&tokenizer_path)?
            .model_max_length
            .filter(|&len| len >= 1.0 && len < bert.max_position_embeddings as f64)
            .map(|len| len as usize),
        None => None,
    };
    // Plain HF BERT directories declare nothing; the position table is then the limit.
    Ok(declared
        .unwrap_or(bert.max_position_embeddings)
        .min(bert.max_position_embeddings))
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, EmbedError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| EmbedError::ModelLoad(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| EmbedError::ModelLoad(format!("{}: {e}", path.display())))
}

pub(crate) fn check_bert(cfg: &BertConfig) -> Result<(), EmbedError> {
    if cfg.num_attention_heads <= 0 || cfg.hidden_size % cfg.num_attention_heads != 0 {
        return Err(EmbedError::ModelLoad(format!(
            "config.json: hidden_size {} is not a multiple of num_attention_heads {}",
            cfg.hidden_size, cfg.num_attention_heads
        )));
    }
    if cfg.hidden_act != "gelu" {
        return Err(EmbedError::ModelLoad(format!(
            "config.json: hidden_act {:?} is not supported (only \"gelu\")",
            cfg.hidden_act
        )));
    }
    if cfg.position_embedding_type != "absolute" {
        return Err(EmbedError::ModelLoad(format!(
            "config.json: position_embedding_type {:?} is not supported (only \"absolute\")",
            cfg.position_embedding_type
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model directory of a tiny encoder with `files` beside its config.json.
    fn model_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("1_Pooling")).unwrap();
        let config = r#"{"hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 1,
            "vocab_size": 10, "max_position_embeddings": 512}"#;
        std::fs::write(dir.path().join("config.json"), config).unwrap();
        std::fs::write(
            dir.path().join("1_Pooling/config.json"),
            r#"{"pooling_mode_mean_tokens": true}"#,
        )
        .unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    #[test]
    fn spec_reads_max_length_from_sentence_bert_config() {
        let dir = model_dir(&[
            ("sentence_bert_config.json", r#"{"max_seq_length": 128}"#),
            ("tokenizer_config.json", r#"{"model_max_length": 64}"#),
        ]);
        let spec = ModelSpec::read(dir.path()).unwrap();
        assert_eq!(spec.max_seq_len, 128);
        assert_eq!(spec.bert.layer_norm_eps, 1e-12);
        assert_eq!(spec.head.pooling, crate::Pooling::Mean);
        assert!(
            spec.head.normalize,
            "no modules.json: normalised, as always"
        );
    }

    #[test]
    fn else_from_the_tokenizer_config_else_from_the_position_table() {
        let dir = model_dir(&[
            ("sentence_bert_config.json", r#"{"do_lower_case": false}"#),
            ("tokenizer_config.json", r#"{"model_max_length": 64}"#),
        ]);
        assert_eq!(ModelSpec::read(dir.path()).unwrap().max_seq_len, 64);
        let unbounded = r#"{"model_max_length": 1000000000000000019884624838656}"#;
        let dir = model_dir(&[("tokenizer_config.json", unbounded)]);
        assert_eq!(ModelSpec::read(dir.path()).unwrap().max_seq_len, 512);
        assert_eq!(
            ModelSpec::read(model_dir(&[]).path()).unwrap().max_seq_len,
            512
        );
    }

    #[test]
    fn a_pooling_width_other_than_the_hidden_size_is_refused() {
        let dir = model_dir(&[]);
        let pooling = r#"{"pooling_mode_cls_token": true, "word_embedding_dimension": 384}"#;
        std::fs::write(dir.path().join("1_Pooling/config.json"), pooling).unwrap();
        let err = ModelSpec::read(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("384") && err.contains("hidden_size is 8"),
            "{err}"
        );
    }

    #[test]
    fn missing_config_names_the_file() {
        let err = ModelSpec::read(Path::new("/nonexistent-model")).unwrap_err();
        assert!(
            matches!(&err, EmbedError::ModelLoad(m) if m.contains("config.json")),
            "{err}"
        );
    }
}
