//! Reads what `build` needs from the cluster: existing generated Secrets (so they are never
//! regenerated) and the Secrets the spec refers to.

use super::build::Names;
use super::build::{Inputs, SecretData, ADMIN_KEY, API_KEYS_FILE, REDIS_PASSWORD_KEY};
use crate::crd::KnowledgeBase;
use crate::{Error, Result};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::{Api, Client};
use serde::Serialize;

/// A Secret (or key of one) the spec names but the cluster lacks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingReference {
    /// The spec field that names it.
    pub field: &'static str,
    pub secret: String,
    /// The missing key; `None` when the whole Secret is missing.
    pub key: Option<String>,
}

/// Inputs of `build` plus the references that could not be resolved.
#[derive(Clone, Debug)]
pub struct Dereferenced {
    pub inputs: Inputs,
    pub missing: Vec<MissingReference>,
}

/// Gathers the inputs of `kb` from the cluster.
pub async fn gather(client: &Client, kb: &KnowledgeBase, namespace: &str) -> Result<Dereferenced> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let names = Names::new(kb, namespace);
    let spec = &kb.spec;
    let generated_api_keys = match spec.auth.api_keys_secret_ref {
        None => Some(existing_or(&secrets, &names, &names.api_keys(), generate_api_keys).await?),
        Some(_) => None,
    };
    let redis_password = match spec.redis.as_ref().and_then(|r| r.managed.as_ref()) {
        Some(_) => {
            Some(existing_or(&secrets, &names, &names.redis(), generate_redis_password).await?)
        }
        None => None,
    };
    let mut missing = Vec::new();
    // Values the workers read only at start, in a fixed order, for the pod-template hash.
    let mut hashed: Vec<(String, Vec<u8>)> = Vec::new();
    for reference in references(kb) {
        let secret = check(&secrets, &reference, &mut missing).await?;
        let data = secret.and_then(|s| s.data).unwrap_or_default();
        for key in &reference.hashed {
            if let Some(value) = data.get(*key) {
                hashed.push((format!("{}/{key}", reference.secret), value.0.clone()));
            }
        }
    }
    let peer_key = spec
        .redis
        .is_some()
        .then_some(())
        .and(generated_api_keys.as_ref());
    if let Some(value) = peer_key.and_then(|d| d.get(ADMIN_KEY)) {
        hashed.push((format!("{}/{ADMIN_KEY}", names.api_keys()), value.0.clone()));
    }
    if let Some(value) = redis_password
        .as_ref()
        .and_then(|d| d.get(REDIS_PASSWORD_KEY))
    {
        hashed.push((
            format!("{}/{REDIS_PASSWORD_KEY}", names.redis()),
            value.0.clone(),
        ));
    }
    Ok(Dereferenced {
        inputs: Inputs {
            namespace: namespace.to_string(),
            generated_api_keys,
            redis_password,
            secrets_hash: secrets_hash(&hashed),
        },
        missing,
    })
}

/// SHA-256 over `name=value` pairs (with lengths, so no two inputs collide); `None` when
/// there are none.
fn secrets_hash(values: &[(String, Vec<u8>)]) -> Option<String> {
    use sha2::Digest;
    if values.is_empty() {
        return None;
    }
    let mut hasher = sha2::Sha256::new();
    for (name, value) in values {
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update((value.len() as u64).to_le_bytes());
        hasher.update(value);
    }
    Some(
        hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

/// A Secret the spec names, with the keys it must hold.
struct Reference<'a> {
    field: &'static str,
    secret: &'a str,
    keys: Vec<&'a str>,
    /// Keys the workers read only at start: their values roll the pods when they change.
    hashed: Vec<&'a str>,
}

/// Names of the Secrets `kb`'s spec refers to (in its namespace).
pub fn referenced_secrets(kb: &KnowledgeBase) -> Vec<String> {
    references(kb)
        .into_iter()
        .map(|r| r.secret.to_string())
        .collect()
}

/// Every Secret the spec names.
fn references(kb: &KnowledgeBase) -> Vec<Reference<'_>> {
    let spec = &kb.spec;
    let mut references = Vec::new();
    if let Some(secret) = &spec.auth.api_keys_secret_ref {
        let mut keys = vec![API_KEYS_FILE];
        if spec.backup.is_some() {
            keys.push(ADMIN_KEY);
        }
        // The admin key doubles as the peer key of replicas (an environment variable).
        let hashed = if spec.redis.is_some() {
            vec![ADMIN_KEY]
        } else {
            vec![]
        };
        references.push(Reference {
            field: "spec.auth.apiKeysSecretRef",
            secret,
            keys,
            hashed,
        });
    }
    let external = spec.redis.as_ref().and_then(|r| r.external.as_ref());
    if let Some(password) = external.and_then(|e| e.password_secret_ref.as_ref()) {
        references.push(Reference {
            field: "spec.redis.external.passwordSecretRef",
            secret: &password.name,
            keys: vec![password.key.as_str()],
            hashed: vec![password.key.as_str()],
        });
    }
    if let Some(ca) = external.and_then(|e| e.tls_ca_secret_ref.as_ref()) {
        references.push(Reference {
            field: "spec.redis.external.tlsCaSecretRef",
            secret: &ca.name,
            keys: vec![ca.key.as_str()],
            hashed: vec![ca.key.as_str()],
        });
    }
    if let Some(s3) = spec.backup.as_ref().and_then(|b| b.destination.s3.as_ref()) {
        references.push(Reference {
            field: "spec.backup.destination.s3.credentialsSecretRef",
            secret: &s3.credentials_secret_ref,
            keys: Vec::new(),
            hashed: Vec::new(),
        });
    }
    let bootstrap = spec.bootstrap.as_ref();
    if let Some(s3) = bootstrap.and_then(|b| b.from_backup.destination.s3.as_ref()) {
        references.push(Reference {
            field: "spec.bootstrap.fromBackup.destination.s3.credentialsSecretRef",
            secret: &s3.credentials_secret_ref,
            keys: Vec::new(),
            hashed: Vec::new(),
        });
    }
    references
}

/// Inputs for rendering offline: every generated Secret is freshly generated.
pub fn offline(kb: &KnowledgeBase, namespace: &str) -> Result<Inputs> {
    let spec = &kb.spec;
    Ok(Inputs {
        namespace: namespace.to_string(),
        generated_api_keys: match spec.auth.api_keys_secret_ref {
            None => Some(generate_api_keys()?),
            Some(_) => None,
        },
        redis_password: match spec.redis.as_ref().and_then(|r| r.managed.as_ref()) {
            Some(_) => Some(generate_redis_password()?),
            None => None,
        },
        // Offline there are no Secrets to read; rendered pods carry no secrets hash.
        secrets_hash: None,
    })
}

/// The data of the generated Secret `name` when it exists, else freshly generated data.
/// Existing data is reused even when a key is missing: a generated Secret is never
/// regenerated, so keys that clients already hold stay valid (also across a KnowledgeBase
/// deleted and created again, while its Secret is kept).
///
/// Only a Secret labelled as this KnowledgeBase's child is read (its metadata is checked
/// first): another Secret of that name is somebody else's, its data is never read, and
/// `apply` refuses to adopt it (AdoptionRefused). The empty data returned for it keeps the
/// plan stable meanwhile.
async fn existing_or(
    secrets: &Api<Secret>,
    names: &Names,
    name: &str,
    generate: fn() -> Result<SecretData>,
) -> Result<SecretData> {
    let read = |source| Error::Read {
        what: format!("Secret {name}"),
        source: Box::new(source),
    };
    let Some(meta) = secrets.get_metadata_opt(name).await.map_err(read)? else {
        return generate();
    };
    if !names.is_child(&meta.metadata.labels.unwrap_or_default()) {
        return Ok(SecretData::new());
    }
    let existing = secrets.get_opt(name).await.map_err(read)?;
    match existing.and_then(|s| s.data) {
        Some(data) if !data.is_empty() => Ok(data),
        _ => generate(),
    }
}

async fn check(
    secrets: &Api<Secret>,
    reference: &Reference<'_>,
    missing: &mut Vec<MissingReference>,
) -> Result<Option<Secret>> {
    let name = reference.secret;
    let secret = secrets.get_opt(name).await.map_err(|source| Error::Read {
        what: format!("Secret {name}"),
        source: Box::new(source),
    })?;
    let absent = |key: Option<&str>| MissingReference {
        field: reference.field,
        secret: name.to_string(),
        key: key.map(String::from),
    };
    let Some(secret) = secret else {
        missing.push(absent(None));
        return Ok(None);
    };
    let has = |key: &str| {
        secret.data.as_ref().is_some_and(|d| d.contains_key(key))
            || secret
                .string_data
                .as_ref()
                .is_some_and(|d| d.contains_key(key))
    };
    for key in reference.keys.iter().filter(|k| !has(k)) {
        missing.push(absent(Some(key)));
    }
    Ok(Some(secret))
}

/// 32 bytes from the OS CSPRNG, hex encoded.
fn random_token() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(Error::Random)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[derive(Serialize)]
struct ApiKeyEntry {
    key: String,
    role: &'static str,
    collections: Vec<&'static str>,
}

/// An admin, a write and a read key for every collection.
fn generate_api_keys() -> Result<SecretData> {
    let admin = random_token()?;
    let entries: Vec<ApiKeyEntry> = [
        ("admin", admin.clone()),
        ("write", random_token()?),
        ("read", random_token()?),
    ]
    .into_iter()
    .map(|(role, key)| ApiKeyEntry {
        key,
        role,
        collections: vec!["*"],
    })
    .collect();
    let file = serde_yaml::to_string(&entries).expect("API keys always serialise");
    Ok(SecretData::from([
        (API_KEYS_FILE.to_string(), ByteString(file.into_bytes())),
        (ADMIN_KEY.to_string(), ByteString(admin.into_bytes())),
    ]))
}

fn generate_redis_password() -> Result<SecretData> {
    Ok(SecretData::from([(
        REDIS_PASSWORD_KEY.to_string(),
        ByteString(random_token()?.into_bytes()),
    )]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_api_keys_are_distinct_and_listed_with_roles() {
        let data = generate_api_keys().unwrap();
        let admin = String::from_utf8(data[ADMIN_KEY].0.clone()).unwrap();
        assert_eq!(admin.len(), 64);
        let file: serde_yaml::Value = serde_yaml::from_slice(&data[API_KEYS_FILE].0).unwrap();
        let entries = file.as_sequence().unwrap();
        let roles: Vec<_> = entries
            .iter()
            .map(|e| e["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["admin", "write", "read"]);
        assert_eq!(entries[0]["key"].as_str().unwrap(), admin);
        assert_ne!(entries[1]["key"], entries[2]["key"]);
        assert_eq!(entries[2]["collections"][0].as_str(), Some("*"));
    }
}
