//! Query and document prefixes, for models trained with them (e5: `"query: "` and
//! `"passage: "`; bge: an instruction before queries).
//!
//! A prefix is text put before the input, exactly as sentence-transformers applies a prompt
//! (`prompt + text`), so its tokens count toward `max_seq_len`. The caller says what a text
//! is ([`TextKind`]); plain [`crate::Embedder::embed`] adds nothing, so the
//! OpenAI-compatible endpoint embeds texts exactly as given.

use crate::model_config::ModelSpec;
use crate::{EmbedError, EmbeddingConfig};

/// What a text is, for models that embed queries and documents with different prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextKind {
    /// A search query: gets `embedding.query_prefix`.
    Query,
    /// A passage to be searched (an ingested chunk): gets `embedding.document_prefix`.
    Document,
}

/// The prefixes in force.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Prefixes {
    query: String,
    document: String,
}

impl Prefixes {
    /// The configured prefixes; an unset one is the model's own prompt for that kind
    /// (`config_sentence_transformers.json`, what sentence-transformers' `encode_query` and
    /// `encode_document` use), else none. A model whose pooling leaves prompt tokens out
    /// (`include_prompt: false`) is refused with a prefix, since a text prefix is pooled.
    pub(crate) fn resolve(
        cfg: &EmbeddingConfig,
        model: &ModelSpec,
    ) -> Result<Prefixes, EmbedError> {
        let prefixes = Prefixes {
            query: (cfg.query_prefix.clone()).unwrap_or_else(|| model.prompts.query.clone()),
            document: (cfg.document_prefix.clone())
                .unwrap_or_else(|| model.prompts.document.clone()),
        };
        if !model.head.include_prompt && prefixes != Prefixes::default() {
            return Err(EmbedError::ModelLoad(format!(
                "the pooling config sets include_prompt: false (prompt tokens are left out of \
                 pooling), which is not supported with prefixes (query {:?}, document {:?}); \
                 set embedding.query_prefix and embedding.document_prefix to \"\"",
                prefixes.query, prefixes.document
            )));
        }
        Ok(prefixes)
    }

    /// The prefix of `kind` (empty: none).
    pub(crate) fn get(&self, kind: TextKind) -> &str {
        match kind {
            TextKind::Query => &self.query,
            TextKind::Document => &self.document,
        }
    }

    /// `texts` with the prefix of `kind` put before each.
    pub(crate) fn apply(&self, kind: TextKind, texts: Vec<String>) -> Vec<String> {
        let prefix = self.get(kind);
        if prefix.is_empty() {
            return texts;
        }
        texts
            .into_iter()
            .map(|text| format!("{prefix}{text}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modules::{Head, Prompts};
    use crate::pooling::Pooling;

    fn model(prompts: Prompts, include_prompt: bool) -> ModelSpec {
        ModelSpec {
            bert: serde_json::from_str(
                r#"{"hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 1,
                    "vocab_size": 10, "max_position_embeddings": 512}"#,
            )
            .unwrap(),
            max_seq_len: 512,
            name: "m".into(),
            head: Head {
                pooling: Pooling::Mean,
                normalize: true,
                include_prompt,
                dimension: None,
            },
            prompts,
        }
    }

    fn e5() -> Prompts {
        Prompts {
            query: "query: ".into(),
            document: "passage: ".into(),
        }
    }

    #[test]
    fn unset_prefixes_are_the_models_prompts_and_set_ones_win() {
        let cfg = EmbeddingConfig::default();
        let p = Prefixes::resolve(&cfg, &model(e5(), true)).unwrap();
        assert_eq!(
            p.apply(TextKind::Query, vec!["a".into()]),
            ["query: a".to_string()]
        );
        assert_eq!(p.get(TextKind::Document), "passage: ");
        let cfg = EmbeddingConfig {
            query_prefix: Some("q: ".into()),
            document_prefix: Some(String::new()),
            ..EmbeddingConfig::default()
        };
        let p = Prefixes::resolve(&cfg, &model(e5(), true)).unwrap();
        assert_eq!(
            (p.get(TextKind::Query), p.get(TextKind::Document)),
            ("q: ", "")
        );
        assert_eq!(
            p.apply(TextKind::Document, vec!["a".into()]),
            ["a".to_string()]
        );
        let none = Prefixes::resolve(
            &EmbeddingConfig::default(),
            &model(Prompts::default(), true),
        );
        assert_eq!(none.unwrap(), Prefixes::default());
    }

    #[test]
    fn prefixes_are_refused_when_pooling_leaves_the_prompt_out() {
        let err = Prefixes::resolve(&EmbeddingConfig::default(), &model(e5(), false))
            .unwrap_err()
            .to_string();
        assert!(err.contains("include_prompt"), "{err}");
        let cfg = EmbeddingConfig {
            query_prefix: Some(String::new()),
            document_prefix: Some(String::new()),
            ..EmbeddingConfig::default()
        };
        assert!(Prefixes::resolve(&cfg, &model(e5(), false)).is_ok());
    }
}
