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

/// Key of the managed-Redis Secret holding `requirepass <password>`, which `redis.conf`
/// includes: the password never appears on a command line.
pub const REDIS_AUTH_CONF_KEY: &str = "auth.conf";

/// The managed-Redis Secret: the password (kept as generated) and the `auth.conf` made
/// from it.
pub(super) fn redis_password(names: &Names, mut data: SecretData) -> Child {
    if let Some(password) = data.get(REDIS_PASSWORD_KEY).cloned() {
        let mut conf = b"requirepass ".to_vec();
        conf.extend_from_slice(&password.0);
        conf.push(b'\n');
        data.insert(
            REDIS_AUTH_CONF_KEY.to_string(),
            k8s_openapi::ByteString(conf),
        );
    }
    opaque(names.redis(), names, Component::Redis, data)
}

fn opaque(name: String, names: &Names, component: Component, data: SecretData) -> Child {
    Child::Secret(Secret {
        metadata: names.meta(name, component),
        type_: Some("Opaque".to_string()),
        data: Some(data),
        ..Secret::default()
    })
}
