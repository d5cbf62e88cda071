//! What the worker already holds: every document id of the collection with the sha256 the
//! CLI stored in its metadata, so a run skips only files the worker really has.

use super::state::IngestState;
use crate::cli::client::{collection_path, percent_encode, ApiClient};
use anyhow::Context;
use reqwest::StatusCode;
use serde::Deserialize;

/// One page of `GET .../documents`.
#[derive(Debug, Deserialize)]
struct DocumentPage {
    documents: Vec<ListedDocument>,
    next: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ListedDocument {
    id: String,
    #[serde(default)]
    metadata: serde_json::Map<String, serde_json::Value>,
}

/// Documents per listing request (the worker's largest page).
const LIST_PAGE: usize = 1000;

/// What the worker holds: document id -> the `sha256` in its metadata, if any.
pub(super) type Held = std::collections::HashMap<String, Option<String>>;

/// Whether a file with `sha256` is already on the worker as document `id`.
pub(super) fn is_current(held: &Held, state: &IngestState, id: &str, sha256: &str) -> bool {
    match held.get(id) {
        Some(Some(on_worker)) => on_worker == sha256,
        // Sent before documents carried their hash: the state file remembers it.
        Some(None) => state.is_current(id, sha256),
        None => false,
    }
}

/// Every document the collection holds, with the hash the CLI stored in it; nothing when
/// the collection does not exist.
pub(super) async fn held_documents(client: &ApiClient, collection: &str) -> anyhow::Result<Held> {
    let mut held = Held::new();
    let mut after: Option<String> = None;
    loop {
        let mut rest = format!("/documents?limit={LIST_PAGE}");
        if let Some(after) = &after {
            rest.push_str("&after=");
            rest.push_str(&percent_encode(after));
        }
        let path = collection_path(collection, &rest);
        let page: DocumentPage = match client.get_json(&path).await {
            Ok(page) => page,
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => return Ok(held),
            Err(e) => return Err(e).context("listing the documents the worker holds"),
        };
        for doc in page.documents {
            let sha256 = doc.metadata.get("sha256").and_then(|v| v.as_str());
            held.insert(doc.id, sha256.map(str::to_string));
        }
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(held),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_held_without_a_hash_is_judged_by_the_state_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = IngestState::load(&dir.path().join("s.json"), "u", "c");
        state.record("a".into(), "h1".into());
        let held = Held::from([
            ("a".to_string(), None),
            ("b".to_string(), Some("h2".to_string())),
        ]);
        assert!(is_current(&held, &state, "a", "h1"));
        assert!(!is_current(&held, &state, "a", "h0"));
        assert!(is_current(&held, &state, "b", "h2"));
        assert!(!is_current(&held, &state, "b", "h1"));
        // The state file alone never skips a document the worker does not hold.
        assert!(!is_current(&Held::new(), &state, "a", "h1"));
    }
}
