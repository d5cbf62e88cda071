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
    max_seq_len: usize,
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
        Ok(TextTokenizer {
            truncating,
            plain,
            max_seq_len,
        })
    }

    /// The tokenizer without truncation or padding.
    pub fn plain(&self) -> &Tokenizer {
        &self.plain
    }

    /// Tokenizes `texts` on the tokenizer's thread pool, truncating each to the maximum.
    /// Texts far longer than the maximum could ever need are cut before tokenizing (see
    /// [`BYTES_PER_TOKEN`]), so a megabyte-long input costs no more than a long one.
    pub fn encode(&self, texts: &[String]) -> Result<Vec<TokenizedText>, EmbedError> {
        let limit = self.max_seq_len.saturating_mul(BYTES_PER_TOKEN);
        let (inputs, cut): (Vec<&str>, Vec<bool>) =
            texts.iter().map(|text| prefix(text, limit)).unzip();
        let encodings = self
            .truncating
            .encode_batch_fast(inputs, true)
            .map_err(|e| EmbedError::Tokenize(e.to_string()))?;
        Ok(encodings
            .into_iter()
            .zip(cut)
            .map(|(enc, cut)| TokenizedText {
                ids: enc.get_ids().iter().map(|&id| i64::from(id)).collect(),
                // With stride 0 the cut-off tokens land in `overflowing`; it is empty
                // exactly when nothing was dropped.
                truncated: cut || !enc.get_overflowing().is_empty(),
            })
            .collect())
    }

    /// Where the model's special tokens go around a text's own tokens.
    pub fn special_tokens(&self) -> Result<SpecialTokens, EmbedError> {
        // One ordinary word between the specials shows which come before and after.
        let probe = self
            .plain
            .encode("a", true)
            .map_err(|e| EmbedError::ModelLoad(format!("tokenizer: {e}")))?;
        let bare = self
            .plain
            .encode("a", false)
            .map_err(|e| EmbedError::ModelLoad(format!("tokenizer: {e}")))?;
        let (ids, word) = (probe.get_ids(), bare.get_ids());
        let at = ids
            .windows(word.len().max(1))
            .position(|w| w == word)
            .ok_or_else(|| {
                EmbedError::ModelLoad(
                    "tokenizer: cannot locate a text between its special tokens".into(),
                )
            })?;
        Ok(SpecialTokens {
            before: ids[..at].iter().map(|&id| i64::from(id)).collect(),
            after: ids[at + word.len()..]
                .iter()
                .map(|&id| i64::from(id))
                .collect(),
        })
    }
}

/// An upper bound on the bytes of text one token stands for in practice (WordPiece
/// tokens average 4-5 bytes of English; the bound leaves room for whitespace, markup and
/// words the tokenizer maps to a single unknown token). Text past `max_seq_len` times this
/// is not tokenized at all.
pub const BYTES_PER_TOKEN: usize = 64;

/// `text` cut to at most `limit` bytes at a character boundary, and whether anything but
/// whitespace was cut off.
pub(crate) fn prefix(text: &str, limit: usize) -> (&str, bool) {
    if text.len() <= limit {
        return (text, false);
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (&text[..end], !text[end..].trim().is_empty())
}

/// The special tokens a text's ids are wrapped in (`[CLS]` and `[SEP]` for BERT).
#[derive(Debug, Clone, PartialEq)]
pub struct SpecialTokens {
    before: Vec<i64>,
    after: Vec<i64>,
}

impl SpecialTokens {
    /// Wraps a text's own token ids, truncated so that the whole fits `max_seq_len`.
    pub fn wrap(&self, ids: &[u32], max_seq_len: usize) -> TokenizedText {
        let room = max_seq_len.saturating_sub(self.before.len() + self.after.len());
        let kept = ids.len().min(room);
        let mut wrapped = self.before.clone();
        wrapped.extend(ids[..kept].iter().map(|&id| i64::from(id)));
        wrapped.extend(&self.after);
        TokenizedText {
            ids: wrapped,
            truncated: kept < ids.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_texts_are_cut_at_a_character_boundary() {
        assert_eq!(prefix("short", 10), ("short", false));
        // "é" is two bytes: a cut inside it moves back to the boundary.
        assert_eq!(prefix("aé", 2), ("a", true));
        assert_eq!(prefix("ab   \n", 2), ("ab", false));
    }

    #[test]
    fn token_ids_are_wrapped_and_truncated() {
        let special = SpecialTokens {
            before: vec![101],
            after: vec![102],
        };
        let short = special.wrap(&[7, 8], 8);
        assert_eq!((short.ids, short.truncated), (vec![101, 7, 8, 102], false));
        let long = special.wrap(&[1, 2, 3, 4, 5], 4);
        assert_eq!((long.ids, long.truncated), (vec![101, 1, 2, 102], true));
    }
}
