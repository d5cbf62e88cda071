//! Text to token ids, with the truncation the model needs and no padding.

use crate::EmbedError;
use std::path::Path;
use tokenizers::{Tokenizer, TruncationParams};

/// The ids of one text, special tokens included, after truncation.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizedText {
    /// Token ids, `[CLS] ... [SEP]`, as the encoder's index type.
    pub ids: Vec<i64>,
    /// Whether tokens past the model's maximum length were dropped.
    pub truncated: bool,
}

/// Two views of `tokenizer.json`: the engine's (truncating at the model's maximum length,
/// never padding: the batcher pads per batch) and the caller's (no truncation, so a
/// token-aware chunker sees the true length of long texts).
pub struct TextTokenizer {
    truncating: Tokenizer,
    plain: Tokenizer,
}

impl TextTokenizer {
    /// Reads `tokenizer.json` from `model_dir`; inputs are cut at `max_seq_len` tokens.
    pub fn load(model_dir: &Path, max_seq_len: usize) -> Result<TextTokenizer, EmbedError> {
        let path = model_dir.join("tokenizer.json");
        let mut plain = Tokenizer::from_file(&path)
            .map_err(|e| EmbedError::ModelLoad(format!("{}: {e}", path.display())))?;
        // tokenizer.json files often carry a fixed padding/truncation from export time
        // (128 for all-MiniLM-L6-v2), which would silently cut inputs short.
        plain.with_padding(None);
        plain
            .with_truncation(None)
            .map_err(|e| EmbedError::ModelLoad(e.to_string()))?;
        let mut truncating = plain.clone();
        let params = TruncationParams {
            max_length: max_seq_len,
            ..TruncationParams::default()
        };
        truncating
            .with_truncation(Some(params))
            .map_err(|e| EmbedError::ModelLoad(format!("max_seq_len {max_seq_len}: {e}")))?;
        Ok(TextTokenizer { truncating, plain })
    }

    /// The tokenizer without truncation or padding.
    pub fn plain(&self) -> &Tokenizer {
        &self.plain
    }

    /// Tokenizes `texts` on the tokenizer's thread pool, truncating each to the maximum.
    pub fn encode(&self, texts: &[String]) -> Result<Vec<TokenizedText>, EmbedError> {
        let inputs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let encodings = self
            .truncating
            .encode_batch_fast(inputs, true)
            .map_err(|e| EmbedError::Tokenize(e.to_string()))?;
        Ok(encodings
            .into_iter()
            .map(|enc| TokenizedText {
                ids: enc.get_ids().iter().map(|&id| i64::from(id)).collect(),
                // With stride 0 the cut-off tokens land in `overflowing`; it is empty
                // exactly when nothing was dropped.
                truncated: !enc.get_overflowing().is_empty(),
            })
            .collect())
    }
}
