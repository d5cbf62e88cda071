//! The resume record of `ingest`: the sha256 of every document the worker acknowledged.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// What the state file holds: the worker and collection it belongs to, and the sha256
/// of every acknowledged document by id.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct IngestState {
    url: String,
    collection: String,
    files: BTreeMap<String, String>,
}

impl IngestState {
    /// Reads the state for this worker and collection; anything else starts afresh.
    pub(super) fn load(path: &Path, url: &str, collection: &str) -> Self {
        let fresh = Self {
            url: url.to_string(),
            collection: collection.to_string(),
            files: BTreeMap::new(),
        };
        let Ok(text) = std::fs::read_to_string(path) else {
            return fresh;
        };
        match serde_json::from_str::<Self>(&text) {
            Ok(state) if state.url == url && state.collection == collection => state,
            Ok(_) => fresh,
            Err(e) => {
                eprintln!("ignoring unreadable state file {}: {e}", path.display());
                fresh
            }
        }
    }

    pub(super) fn is_current(&self, id: &str, sha256: &str) -> bool {
        self.files.get(id).is_some_and(|h| h == sha256)
    }

    /// Notes that the worker acknowledged `id` with this content.
    pub(super) fn record(&mut self, id: String, sha256: String) {
        self.files.insert(id, sha256);
    }

    /// Writes the state atomically (temp file + rename) so a crash never leaves half a file.
    pub(super) fn save(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(self)?;
        std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_of_another_worker_or_collection_is_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut state = IngestState::load(&path, "http://a", "docs");
        state.record("x.md".into(), "00".into());
        state.save(&path).unwrap();
        assert!(IngestState::load(&path, "http://a", "docs").is_current("x.md", "00"));
        assert!(!IngestState::load(&path, "http://b", "docs").is_current("x.md", "00"));
        assert!(!IngestState::load(&path, "http://a", "other").is_current("x.md", "00"));
        std::fs::write(&path, "{not json").unwrap();
        assert!(IngestState::load(&path, "http://a", "docs")
            .files
            .is_empty());
    }
}
