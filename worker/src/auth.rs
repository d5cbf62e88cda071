//! API keys: who may do what to which collections.
//!
//! Keys come from a YAML file (the mounted Secret): `[{key, role, collections}]`. Roles are
//! ordered read < write < admin; `collections: ["*"]` means every collection. Presented
//! keys are compared in constant time against every configured key (both hashed to the
//! same length first), so response timing reveals neither a prefix nor which key matched.
//!
//! Keys read from a file can be rotated without a restart: [`Auth::reload`] (on SIGHUP and
//! every few seconds, see `kb-worker serve`) re-reads the file and swaps the keys in when
//! its content changed and parses; a broken file keeps the previous keys (and is logged),
//! so a bad edit never locks every client out. Kubernetes updates a mounted Secret in
//! place, so rotating the Secret rotates the keys.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::Path;
use subtle::ConstantTimeEq;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Read,
    Write,
    Admin,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    key: String,
    role: Role,
    collections: Vec<String>,
}

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    pub role: Role,
    collections: Vec<String>,
}

impl Principal {
    /// Whether the caller may see `collection` at all.
    pub fn can_see(&self, collection: &str) -> bool {
        self.collections.iter().any(|c| c == "*" || c == collection)
    }

    /// Whether the caller has at least `role` on `collection`.
    pub fn allows(&self, role: Role, collection: &str) -> bool {
        self.role >= role && self.can_see(collection)
    }

    /// Whether the caller has at least `role` on every collection.
    pub fn allows_all(&self, role: Role) -> bool {
        self.role >= role && self.collections.iter().any(|c| c == "*")
    }
}

/// Authentication failures.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AuthError {
    #[error("missing API key: send `Authorization: Bearer KEY` or `X-API-Key: KEY`")]
    Missing,
    #[error("invalid API key")]
    Invalid,
}

/// Errors loading the keys file.
#[derive(Debug, thiserror::Error)]
pub enum KeysFileError {
    #[error("cannot read API keys file {0}: {1}")]
    Read(String, std::io::Error),
    #[error("invalid API keys file {0}: {1}")]
    Parse(String, serde_yaml::Error),
    #[error("invalid API keys file {0}: {1}")]
    Invalid(String, String),
}

/// (sha256 of the key, principal)
type Keys = Vec<([u8; 32], Principal)>;

/// The configured keys, or open access.
pub struct Auth {
    keys: parking_lot::RwLock<Keys>,
    open: bool,
    /// The keys file and the SHA-256 of the content last loaded from it.
    source: Option<(std::path::PathBuf, parking_lot::Mutex<[u8; 32]>)>,
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The keys of a keys file, and why each entry left out was invalid.
struct Parsed {
    keys: Keys,
    rejected: Vec<String>,
}

/// Parses the YAML keys file content. An invalid entry is left out and explained in
/// `rejected`; the file itself failing to parse is an error.
fn parse_keys(text: &str, origin: &str) -> Result<Parsed, KeysFileError> {
    let entries: Vec<serde_yaml::Value> =
        serde_yaml::from_str(text).map_err(|e| KeysFileError::Parse(origin.into(), e))?;
    let mut parsed = Parsed {
        keys: Vec::with_capacity(entries.len()),
        rejected: Vec::new(),
    };
    for (i, entry) in entries.into_iter().enumerate() {
        let entry = match serde_yaml::from_value::<KeyEntry>(entry) {
            Ok(entry) => entry,
            Err(e) => {
                parsed.rejected.push(format!("entry {}: {e}", i + 1));
                continue;
            }
        };
        if entry.key.len() < 16 {
            parsed.rejected.push(format!(
                "entry {}: every key needs at least 16 characters",
                i + 1
            ));
            continue;
        }
        if entry.collections.is_empty() {
            parsed.rejected.push(format!(
                "entry {}: every key needs `collections` (a list of names, or [\"*\"])",
                i + 1
            ));
            continue;
        }
        let principal = Principal {
            role: entry.role,
            collections: entry.collections,
        };
        parsed.keys.push((digest(&entry.key), principal));
    }
    Ok(parsed)
}

/// What a reload of a changed keys file put in force.
#[derive(Debug, PartialEq)]
pub struct Reloaded {
    /// Keys now in force: the valid entries of the new file, and nothing else.
    pub keys: usize,
    /// Entries left out, with the reason: they grant nothing until fixed.
    pub rejected: Vec<String>,
}

impl Auth {
    /// No authentication: every caller is admin on every collection.
    pub fn open() -> Self {
        Self {
            keys: parking_lot::RwLock::new(Vec::new()),
            open: true,
            source: None,
        }
    }

    /// Parses the YAML keys file content.
    /// At start every entry must be valid: the worker refuses to start otherwise.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self, KeysFileError> {
        let parsed = parse_keys(text, origin)?;
        if !parsed.rejected.is_empty() {
            return Err(KeysFileError::Invalid(
                origin.into(),
                parsed.rejected.join("; "),
            ));
        }
        Ok(Self {
            keys: parking_lot::RwLock::new(parsed.keys),
            open: false,
            source: None,
        })
    }

    /// Reads the YAML keys file (and remembers it for [`Auth::reload`]).
    pub fn from_file(path: &Path) -> Result<Self, KeysFileError> {
        let origin = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|e| KeysFileError::Read(origin.clone(), e))?;
        let mut auth = Self::from_yaml(&text, &origin)?;
        auth.source = Some((path.to_path_buf(), parking_lot::Mutex::new(digest(&text))));
        Ok(auth)
    }

    /// Re-reads the keys file: `Ok(Some(_))` when its content changed and its valid keys
    /// replace the old ones, `Ok(None)` when nothing changed (or there is no file).
    ///
    /// Revocation fails closed: a key absent from the new file stops working even when
    /// another entry is invalid (the invalid entries are left out and reported in
    /// [`Reloaded::rejected`]). Only a file that cannot be read or parsed at all keeps the
    /// previous keys in force (there is no list of keys to go by), and is an error.
    pub fn reload(&self) -> Result<Option<Reloaded>, KeysFileError> {
        let Some((path, loaded)) = &self.source else {
            return Ok(None);
        };
        let origin = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|e| KeysFileError::Read(origin.clone(), e))?;
        let fingerprint = digest(&text);
        let mut loaded = loaded.lock();
        if *loaded == fingerprint {
            return Ok(None);
        }
        let parsed = parse_keys(&text, &origin)?;
        let keys = parsed.keys.len();
        *self.keys.write() = parsed.keys;
        *loaded = fingerprint;
        Ok(Some(Reloaded {
            keys,
            rejected: parsed.rejected,
        }))
    }
    /// Resolves the caller from request headers.
    pub fn authenticate(&self, headers: &axum::http::HeaderMap) -> Result<Principal, AuthError> {
        if self.open {
            return Ok(Principal {
                role: Role::Admin,
                collections: vec!["*".into()],
            });
        }
        let presented = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
            .ok_or(AuthError::Missing)?;
        let presented = digest(presented.trim());
        let mut found = None;
        for (key, principal) in self.keys.read().iter() {
            if bool::from(key.ct_eq(&presented)) && found.is_none() {
                found = Some(principal.clone());
            }
        }
        found.ok_or(AuthError::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;
    use rand::Rng;

    const KEYS: &str = r#"
- { key: "reader-key-0123456789", role: read, collections: ["docs"] }
- { key: "admin-key-0123456789", role: admin, collections: ["*"] }
"#;

    fn bearer(key: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("authorization", format!("Bearer {key}").parse().unwrap());
        h
    }

    #[test]
    fn bearer_and_x_api_key_both_authenticate() {
        let auth = Auth::from_yaml(KEYS, "test").unwrap();
        assert_eq!(
            auth.authenticate(&bearer("reader-key-0123456789"))
                .unwrap()
                .role,
            Role::Read
        );
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "admin-key-0123456789".parse().unwrap());
        assert_eq!(auth.authenticate(&h).unwrap().role, Role::Admin);
    }

    #[test]
    fn missing_and_wrong_keys_are_refused() {
        let auth = Auth::from_yaml(KEYS, "test").unwrap();
        assert_eq!(
            auth.authenticate(&HeaderMap::new()),
            Err(AuthError::Missing)
        );
        assert_eq!(
            auth.authenticate(&bearer("reader-key-012345678")),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn scoped_key_never_reaches_another_collection() {
        let mut rng = rand::thread_rng();
        let names: Vec<String> = (0..200)
            .map(|i| format!("c{i}-{}", rng.gen::<u32>()))
            .collect();
        let yaml: String = names
            .iter()
            .map(|n| {
                format!(
                    "- {{ key: \"key-for-{n}-padding\", role: write, collections: [\"{n}\"] }}\n"
                )
            })
            .collect();
        let auth = Auth::from_yaml(&yaml, "test").unwrap();
        for _ in 0..2000 {
            let owner = &names[rng.gen_range(0..names.len())];
            let target = &names[rng.gen_range(0..names.len())];
            let p = auth
                .authenticate(&bearer(&format!("key-for-{owner}-padding")))
                .unwrap();
            assert_eq!(p.allows(Role::Read, target), owner == target);
            assert!(!p.allows(Role::Admin, owner));
            assert!(!p.allows_all(Role::Read));
        }
    }

    #[test]
    fn bad_keys_files_are_explained() {
        let err = Auth::from_yaml("- { key: short, role: read, collections: [a] }", "f")
            .err()
            .unwrap();
        assert!(err.to_string().contains("16 characters"));
        let err = Auth::from_yaml(
            "- { key: k0123456789abcdefg, role: owner, collections: [a] }",
            "f",
        )
        .err()
        .unwrap();
        assert!(
            err.to_string().contains("owner") || err.to_string().contains("variant"),
            "{err}"
        );
    }

    #[test]
    fn a_rotated_keys_file_replaces_the_keys_and_a_broken_one_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api-keys.yaml");
        let file = |key: &str| format!("- {{ key: {key}, role: admin, collections: ['*'] }}\n");
        std::fs::write(&path, file("old-key-0123456789abcdef")).unwrap();
        let auth = Auth::from_file(&path).unwrap();
        assert!(auth
            .authenticate(&bearer("old-key-0123456789abcdef"))
            .is_ok());
        assert_eq!(auth.reload().unwrap(), None, "unchanged file");

        std::fs::write(&path, file("new-key-0123456789abcdef")).unwrap();
        assert_eq!(
            auth.reload().unwrap(),
            Some(Reloaded {
                keys: 1,
                rejected: vec![]
            })
        );
        assert!(auth
            .authenticate(&bearer("new-key-0123456789abcdef"))
            .is_ok());
        assert_eq!(
            auth.authenticate(&bearer("old-key-0123456789abcdef")),
            Err(AuthError::Invalid)
        );

        // A file that does not parse at all keeps the keys in force (and is an error).
        std::fs::write(&path, "- { key: [unclosed\n").unwrap();
        assert!(auth.reload().is_err());
        assert!(auth
            .authenticate(&bearer("new-key-0123456789abcdef"))
            .is_ok());
    }

    #[test]
    fn revoking_a_key_works_even_when_another_entry_is_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api-keys.yaml");
        std::fs::write(
            &path,
            "- { key: kept-key-0123456789, role: admin, collections: ['*'] }\n\
             - { key: revoked-key-0123456789, role: admin, collections: ['*'] }\n",
        )
        .unwrap();
        let auth = Auth::from_file(&path).unwrap();
        // The revoked key is removed; in the same edit a new entry has a typo.
        std::fs::write(
            &path,
            "- { key: kept-key-0123456789, role: admin, collections: ['*'] }\n\
             - { key: short, role: read, collections: ['docs'] }\n\
             - { key: other-key-0123456789, role: superuser, collections: ['*'] }\n",
        )
        .unwrap();
        let reloaded = auth.reload().unwrap().expect("changed");
        assert_eq!(reloaded.keys, 1);
        assert_eq!(reloaded.rejected.len(), 2, "{:?}", reloaded.rejected);
        assert!(reloaded.rejected[0].starts_with("entry 2:"), "{reloaded:?}");
        assert_eq!(
            auth.authenticate(&bearer("revoked-key-0123456789")),
            Err(AuthError::Invalid)
        );
        assert!(auth.authenticate(&bearer("kept-key-0123456789")).is_ok());
        assert_eq!(
            auth.authenticate(&bearer("short")),
            Err(AuthError::Invalid),
            "an invalid entry grants nothing"
        );
    }
}
