//! Token-aware, markdown-aware chunking.
//!
//! A document is cut into blocks (headings, fenced code blocks, paragraphs), and blocks are
//! packed greedily into chunks of at most `max_tokens` model tokens. A heading always starts
//! a new chunk so a chunk never straddles two sections; a code block stays whole when it
//! fits. A block longer than a chunk is cut into token windows that share `overlap` tokens.
//! Chunk ids hash the document id, the position and the text, so re-ingesting the same
//! content yields the same ids.

use kb_config::ChunkingConfig;
use sha2::{Digest, Sha256};
use tokenizers::Tokenizer;

/// One chunk of a document.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub chunk_id: String,
    pub text: String,
    /// Model tokens in the chunk (special tokens excluded).
    pub tokens: usize,
}

/// Splits documents into chunks with one tokenizer's notion of length.
pub struct Chunker {
    max_tokens: usize,
    overlap: usize,
    /// The model's tokenizer without padding or truncation, so counts are true lengths.
    tokenizer: Tokenizer,
}

#[derive(Debug, PartialEq)]
enum BlockKind {
    Heading,
    Other,
}

/// Splits markdown into (kind, text) blocks: headings, fenced code, paragraphs.
fn blocks(text: &str) -> Vec<(BlockKind, String)> {
    let mut out = Vec::new();
    let mut para = String::new();
    let mut in_code = false;
    let flush = |para: &mut String, out: &mut Vec<(BlockKind, String)>| {
        if !para.trim().is_empty() {
            out.push((BlockKind::Other, para.trim_end().to_string()));
        }
        para.clear();
    };
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            if in_code {
                para.push_str(line);
                para.push('\n');
                flush(&mut para, &mut out);
            } else {
                flush(&mut para, &mut out);
                para.push_str(line);
                para.push('\n');
            }
            in_code = !in_code;
        } else if in_code {
            para.push_str(line);
            para.push('\n');
        } else if trimmed.starts_with('#') {
            flush(&mut para, &mut out);
            out.push((BlockKind::Heading, line.trim().to_string()));
        } else if trimmed.is_empty() {
            flush(&mut para, &mut out);
        } else {
            para.push_str(line);
            para.push('\n');
        }
    }
    flush(&mut para, &mut out);
    out
}

impl Chunker {
    pub fn new(cfg: &ChunkingConfig, tokenizer: &Tokenizer) -> Self {
        let mut tokenizer = tokenizer.clone();
        tokenizer.with_padding(None);
        // Removing truncation cannot fail; the error type only covers invalid parameters.
        let _ = tokenizer.with_truncation(None);
        Self {
            max_tokens: cfg.max_tokens.max(1),
            overlap: cfg.overlap.min(cfg.max_tokens.saturating_sub(1)),
            tokenizer,
        }
    }

    fn count(&self, text: &str) -> usize {
        self.tokenizer
            .encode(text, false)
            .map(|e| e.get_ids().len())
            .unwrap_or_else(|_| text.split_whitespace().count())
    }

    /// Cuts one oversized block into overlapping token windows (by character offsets).
    fn windows(&self, text: &str) -> Vec<(String, usize)> {
        let Ok(enc) = self.tokenizer.encode(text, false) else {
            return vec![(text.to_string(), self.count(text))];
        };
        let offsets = enc.get_offsets();
        let step = self.max_tokens - self.overlap;
        let mut out = Vec::new();
        let mut start = 0;
        while start < offsets.len() {
            let end = (start + self.max_tokens).min(offsets.len());
            let (from, to) = (offsets[start].0, offsets[end - 1].1);
            out.push((text[from..to].to_string(), end - start));
            if end == offsets.len() {
                break;
            }
            start += step;
        }
        out
    }

    /// Chunks `text` of document `doc_id`.
    pub fn chunk(&self, doc_id: &str, text: &str) -> Vec<Chunk> {
        let mut pieces: Vec<(String, usize)> = Vec::new();
        let mut current = String::new();
        let mut current_tokens = 0;
        let mut push = |current: &mut String, tokens: &mut usize| {
            if !current.trim().is_empty() {
                pieces.push((current.trim().to_string(), *tokens));
            }
            current.clear();
            *tokens = 0;
        };
        for (kind, block) in blocks(text) {
            let tokens = self.count(&block);
            if kind == BlockKind::Heading || current_tokens + tokens > self.max_tokens {
                push(&mut current, &mut current_tokens);
            }
            if tokens > self.max_tokens {
                let windows = self.windows(&block);
                for (w, n) in windows {
                    current = w;
                    current_tokens = n;
                    push(&mut current, &mut current_tokens);
                }
                continue;
            }
            if !current.is_empty() {
                current.push_str("\n\n");
            }
            current.push_str(&block);
            current_tokens += tokens;
        }
        push(&mut current, &mut current_tokens);
        pieces
            .into_iter()
            .enumerate()
            .map(|(i, (text, tokens))| Chunk {
                chunk_id: chunk_id(doc_id, i, &text),
                text,
                tokens,
            })
            .collect()
    }
}

impl Chunker {
    /// The whole document as one chunk, uncut (for documents that bring their own vector).
    pub fn whole(&self, doc_id: &str, text: &str) -> Chunk {
        Chunk {
            chunk_id: chunk_id(doc_id, 0, text),
            text: text.to_string(),
            tokens: 0,
        }
    }
}

fn chunk_id(doc_id: &str, index: usize, text: &str) -> String {
    let mut h = Sha256::new();
    h.update(doc_id.as_bytes());
    h.update([0]);
    h.update(index.to_le_bytes());
    h.update(text.as_bytes());
    format!("{}-{index}", &hex::encode(h.finalize())[..16])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::tokenizer;

    fn chunker(max_tokens: usize, overlap: usize) -> Chunker {
        Chunker::new(
            &ChunkingConfig {
                max_tokens,
                overlap,
            },
            tokenizer(),
        )
    }

    #[test]
    fn headings_start_new_chunks_and_small_sections_stay_whole() {
        let text = "# Intro\nKnowledge bases hold documents.\n\n# Usage\nQuery them over HTTP.\n";
        let chunks = chunker(200, 10).chunk("d", text);
        assert_eq!(chunks.len(), 2);
        assert!(chunks[0].text.starts_with("# Intro") && chunks[0].text.contains("documents"));
        assert!(chunks[1].text.starts_with("# Usage"));
    }

    #[test]
    fn code_block_is_kept_whole_when_it_fits() {
        let text =
            "Intro paragraph.\n\n```rust\nfn main() {\n\n    println!(\"hi\");\n}\n```\nAfter.";
        let chunks = chunker(200, 10).chunk("d", text);
        assert_eq!(chunks.len(), 1);
        assert!(chunks[0].text.contains("fn main() {\n\n    println!"));
    }

    #[test]
    fn long_text_is_windowed_within_budget_with_overlap() {
        let words: Vec<String> = (0..400).map(|i| format!("word{i}")).collect();
        let text = words.join(" ");
        let chunks = chunker(50, 10).chunk("d", &text);
        assert!(chunks.len() > 5);
        for c in &chunks {
            assert!(c.tokens <= 50, "{} tokens", c.tokens);
            assert!(chunker(50, 10).count(&c.text) <= 50);
        }
        // Consecutive windows share their boundary text.
        let tail: Vec<&str> = chunks[0].text.split_whitespace().rev().take(2).collect();
        assert!(
            chunks[1].text.contains(tail[1]),
            "no overlap between windows"
        );
        assert!(text.ends_with(
            chunks
                .last()
                .unwrap()
                .text
                .split_whitespace()
                .last()
                .unwrap()
        ));
    }

    #[test]
    fn chunk_ids_are_stable_and_depend_on_document_and_content() {
        let c = chunker(200, 10);
        let a = c.chunk("d", "same text");
        assert_eq!(a, c.chunk("d", "same text"));
        assert_ne!(a[0].chunk_id, c.chunk("e", "same text")[0].chunk_id);
        assert_ne!(a[0].chunk_id, c.chunk("d", "other text")[0].chunk_id);
    }

    #[test]
    fn empty_document_has_no_chunks() {
        assert!(chunker(200, 10).chunk("d", " \n\n ").is_empty());
    }
}
