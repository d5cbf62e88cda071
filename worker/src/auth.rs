//! API keys: who may do what to which collections.
//!
//! Keys come from a YAML file (the mounted Secret): `[{key, role, collections}]`. Roles are
//! ordered read < write < admin; `collections: ["*"]` means every collection. Presented
//! keys are compared in constant time against every configured key (both hashed to the
//! same length first), so response timing reveals neither a prefix nor which key matched.

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

/// The configured keys, or open access.
pub struct Auth {
    /// (sha256 of the key, principal)
    keys: Vec<([u8; 32], Principal)>,
    open: bool,
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl Auth {
    /// No authentication: every caller is admin on every collection.
    pub fn open() -> Self {
        Self {
            keys: Vec::new(),
            open: true,
        }
    }

    /// Parses the YAML keys file content.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self, KeysFileError> {
        let entries: Vec<KeyEntry> =
            serde_yaml::from_str(text).map_err(|e| KeysFileError::Parse(origin.into(), e))?;
        let mut keys = Vec::with_capacity(entries.len());
        for e in entries {
            if e.key.len() < 16 {
                return Err(KeysFileError::Invalid(
                    origin.into(),
                    "every key needs at least 16 characters".into(),
                ));
            }
            if e.collections.is_empty() {
                return Err(KeysFileError::Invalid(
                    origin.into(),
                    "every key needs `collections` (a list of names, or [\"*\"])".into(),
                ));
            }
            let principal = Principal {
                role: e.role,
                collections: e.collections,
            };
            keys.push((digest(&e.key), principal));
        }
        Ok(Self { keys, open: false })
    }

    /// Reads the YAML keys file.
    pub fn from_file(path: &Path) -> Result<Self, KeysFileError> {
        let origin = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|e| KeysFileError::Read(origin.clone(), e))?;
        Self::from_yaml(&text, &origin)
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
        for (key, principal) in &self.keys {
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
}
