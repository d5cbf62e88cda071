//! Generated Secrets: the API keys and the managed-Redis password.

use super::names::{Component, Names};
use super::{Child, SecretData};
use k8s_openapi::api::core::v1::Secret;

/// Key of the API-keys file in the API-keys Secret.
pub const API_KEYS_FILE: &str = "api-keys.yaml";
/// Key of the raw admin key (used by the backup job) in the API-keys Secret.
pub const ADMIN_KEY: &str = "admin-key";
/// Key of the password in the managed-Redis Secret.
pub const REDIS_PASSWORD_KEY: &str = "password";

pub(super) fn api_keys(names: &Names, data: SecretData) -> Child {
    opaque(names.api_keys(), names, Component::Worker, data)
}

/// Key of the managed-Redis Secret holding the passwords Redis accepts (`requirepass`, or
/// two during a rotation), which `redis.conf` includes: the password never appears on a
/// command line. Written by the operator (`reconcile::rotation`).
pub const REDIS_AUTH_CONF_KEY: &str = "auth.conf";
/// Key of the managed-Redis Secret holding the password the workers present (it follows
/// `password` during a rotation, once Redis accepts the new one).
pub const REDIS_WORKER_PASSWORD_KEY: &str = "worker-password";

/// The managed-Redis Secret: the password (kept as generated or as rotated), the
/// `auth.conf` and `worker-password` the rotation derived from it.
pub(super) fn redis_password(names: &Names, data: SecretData) -> Child {
    opaque(names.redis(), names, Component::Redis, data)
}

/// SHA-256 (first 8 bytes, hex) of a secret value, for pod-template annotations that
/// roll pods when it changes without showing it.
pub fn short_hash(value: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(value)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn opaque(name: String, names: &Names, component: Component, data: SecretData) -> Child {
    Child::Secret(Secret {
        metadata: names.meta(name, component),
        type_: Some("Opaque".to_string()),
        data: Some(data),
        ..Secret::default()
    })
}
