//! What a collection's vectors come from: the identity of the embedding model that made
//! them, or the clients ([`Binding::External`]). It is recorded in the log
//! ([`super::Op::BindCollection`]), so snapshots, backups and every replica carry it, and a
//! worker running another model refuses to mix its vectors with the stored ones.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;

/// The files of a sentence-transformers directory that decide its vectors, hashed into
/// [`ModelIdentity::digest`] when present.
const MODEL_FILES: &[&str] = &[
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
    "model.safetensors",
];

/// The identity of an embedding model as it embeds: the weights and configuration, and
/// every setting that changes its vectors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelIdentity {
    /// The model's name (its directory's), for people: two names with the same digest
    /// and settings are the same model.
    pub name: String,
    /// `sha256:` and the first 16 bytes, in hex, of the SHA-256 of the model's files
    /// (weights, configuration, tokenizer), each with its name and length.
    pub digest: String,
    /// `mean`, `cls`, `max` or `mean_sqrt_len`.
    pub pooling: String,
    /// Whether vectors are L2-normalised.
    pub normalize: bool,
    /// Prepended to queries before embedding.
    pub query_prefix: String,
    /// Prepended to documents before embedding.
    pub document_prefix: String,
    pub dim: usize,
    /// `float` for fp32, bf16 and fp16 alike: a precision is only chosen when its vectors
    /// are within cosine 0.999 of fp32's, so vectors of each are comparable.
    pub precision_class: String,
}

impl ModelIdentity {
    /// Whether vectors of `self` and `other` are comparable: everything but the name.
    pub fn same_vectors(&self, other: &ModelIdentity) -> bool {
        self.digest == other.digest
            && self.pooling == other.pooling
            && self.normalize == other.normalize
            && self.query_prefix == other.query_prefix
            && self.document_prefix == other.document_prefix
            && self.dim == other.dim
            && self.precision_class == other.precision_class
    }

    /// One line for errors and logs.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} ({}, {} pooling{}, {} dimensions",
            self.name,
            self.digest,
            self.pooling,
            if self.normalize { ", normalised" } else { "" },
            self.dim
        );
        if !self.query_prefix.is_empty() || !self.document_prefix.is_empty() {
            s.push_str(&format!(
                ", query prefix {:?}, document prefix {:?}",
                self.query_prefix, self.document_prefix
            ));
        }
        s.push(')');
        s
    }

    /// The identity of `embedder`, loaded from `model_dir`.
    pub fn of(embedder: &kb_embed::Embedder, model_dir: &Path) -> std::io::Result<ModelIdentity> {
        Ok(ModelIdentity {
            name: embedder.model_name().to_string(),
            digest: digest(model_dir)?,
            pooling: embedder.pooling().name().to_string(),
            normalize: embedder.normalizes(),
            query_prefix: embedder.prefix(kb_embed::TextKind::Query).to_string(),
            document_prefix: embedder.prefix(kb_embed::TextKind::Document).to_string(),
            dim: embedder.dim(),
            precision_class: "float".into(),
        })
    }
}

/// Where a collection's vectors come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Binding {
    /// Embedded by this model: only a worker running it writes text into the collection or
    /// embeds queries for it.
    Model(ModelIdentity),
    /// Clients send the vectors (of any model): documents and queries must carry them.
    External,
}

impl Binding {
    /// One line for errors and logs.
    pub fn describe(&self) -> String {
        match self {
            Binding::Model(m) => m.describe(),
            Binding::External => "vectors sent by clients".into(),
        }
    }
}

/// The digest of a model directory (see [`ModelIdentity::digest`]): every file that
/// decides its vectors, hashed whole, once per start.
pub fn digest(model_dir: &Path) -> std::io::Result<String> {
    let mut h = Sha256::new();
    for file in MODEL_FILES {
        let path = model_dir.join(file);
        let mut f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        h.update(file.as_bytes());
        h.update(f.metadata()?.len().to_le_bytes());
        std::io::copy(&mut f, &mut h)?;
    }
    Ok(format!("sha256:{}", hex::encode(&h.finalize()[..16])))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(name: &str, digest: &str) -> ModelIdentity {
        ModelIdentity {
            name: name.into(),
            digest: digest.into(),
            pooling: "mean".into(),
            normalize: true,
            query_prefix: String::new(),
            document_prefix: String::new(),
            dim: 384,
            precision_class: "float".into(),
        }
    }

    #[test]
    fn the_name_does_not_decide_and_every_setting_does() {
        let a = identity("a", "sha256:1");
        assert!(a.same_vectors(&identity("renamed", "sha256:1")));
        assert!(!a.same_vectors(&identity("a", "sha256:2")));
        let mut cls = a.clone();
        cls.pooling = "cls".into();
        assert!(!a.same_vectors(&cls));
        let mut prefixed = a.clone();
        prefixed.query_prefix = "query: ".into();
        assert!(!a.same_vectors(&prefixed));
        let mut raw = a.clone();
        raw.normalize = false;
        assert!(!a.same_vectors(&raw));
    }

    #[test]
    fn the_digest_changes_with_any_model_file_and_not_with_the_directory() {
        let one = tempfile::tempdir().unwrap();
        let two = tempfile::tempdir().unwrap();
        for dir in [one.path(), two.path()] {
            std::fs::write(dir.join("config.json"), b"{\"hidden_size\": 4}").unwrap();
            std::fs::write(dir.join("model.safetensors"), b"weights").unwrap();
        }
        let d1 = digest(one.path()).unwrap();
        assert_eq!(d1, digest(two.path()).unwrap(), "same files, same digest");
        assert!(d1.starts_with("sha256:") && d1.len() == 7 + 32, "{d1}");
        // Same length, other bytes.
        std::fs::write(two.path().join("model.safetensors"), b"WEIGHTS").unwrap();
        assert_ne!(d1, digest(two.path()).unwrap());
        std::fs::create_dir(one.path().join("1_Pooling")).unwrap();
        std::fs::write(one.path().join("1_Pooling/config.json"), b"{}").unwrap();
        assert_ne!(d1, digest(one.path()).unwrap());
    }
}
