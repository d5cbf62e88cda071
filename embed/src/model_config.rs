//! The files of a sentence-transformers model directory that shape the encoder.

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

/// `1_Pooling/config.json`.
#[derive(Debug, Clone, Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

/// `sentence_bert_config.json`.
#[derive(Debug, Clone, Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
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
    /// Reads and checks `config.json`, `1_Pooling/config.json` and `sentence_bert_config.json`.
    pub fn read(model_dir: &Path) -> Result<ModelSpec, EmbedError> {
        let bert: BertConfig = read_json(&model_dir.join("config.json"))?;
        check_bert(&bert)?;
        let pooling: PoolingConfig = read_json(&model_dir.join("1_Pooling").join("config.json"))?;
        check_mean_pooling(&pooling)?;
        let st_path = model_dir.join("sentence_bert_config.json");
        // Plain HF BERT directories lack this file; the position table is then the limit.
        let st_max = if st_path.exists() {
            read_json::<SentenceBertConfig>(&st_path)?.max_seq_length
        } else {
            None
        };
        let max_seq_len = st_max
            .unwrap_or(bert.max_position_embeddings)
            .min(bert.max_position_embeddings);
        Ok(ModelSpec {
            bert,
            max_seq_len,
            name: model_name(model_dir),
        })
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, EmbedError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| EmbedError::ModelLoad(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map_err(|e| EmbedError::ModelLoad(format!("{}: {e}", path.display())))
}

fn check_bert(cfg: &BertConfig) -> Result<(), EmbedError> {
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

fn check_mean_pooling(cfg: &PoolingConfig) -> Result<(), EmbedError> {
    let only_mean = cfg.pooling_mode_mean_tokens
        && !cfg.pooling_mode_cls_token
        && !cfg.pooling_mode_max_tokens
        && !cfg.pooling_mode_mean_sqrt_len_tokens;
    if only_mean {
        Ok(())
    } else {
        Err(EmbedError::ModelLoad(format!(
            "1_Pooling/config.json: only mean pooling is supported, got {cfg:?}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pooling(json: &str) -> PoolingConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn mean_pooling_is_accepted() {
        let cfg = pooling(r#"{"pooling_mode_mean_tokens": true}"#);
        assert!(check_mean_pooling(&cfg).is_ok());
    }

    #[test]
    fn cls_pooling_is_rejected_with_the_file_name() {
        let cfg = pooling(r#"{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}"#);
        let err = check_mean_pooling(&cfg).unwrap_err().to_string();
        assert!(
            err.contains("1_Pooling/config.json") && err.contains("mean"),
            "{err}"
        );
    }

    #[test]
    fn spec_reads_max_length_from_sentence_bert_config() {
        let dir = std::env::temp_dir().join(format!("kb-embed-spec-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
        let config = r#"{"hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 1,
            "vocab_size": 10, "max_position_embeddings": 512}"#;
        std::fs::write(dir.join("config.json"), config).unwrap();
        std::fs::write(
            dir.join("1_Pooling/config.json"),
            r#"{"pooling_mode_mean_tokens": true}"#,
        )
        .unwrap();
        std::fs::write(
            dir.join("sentence_bert_config.json"),
            r#"{"max_seq_length": 128}"#,
        )
        .unwrap();
        let spec = ModelSpec::read(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(spec.max_seq_len, 128);
        assert_eq!(spec.bert.layer_norm_eps, 1e-12);
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
