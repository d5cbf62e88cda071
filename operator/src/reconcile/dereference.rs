//! Reads what `build` needs from the cluster: existing generated Secrets (so they are never
//! regenerated) and the Secrets the spec refers to.

use super::build::Names;
use super::build::{
    short_hash, Inputs, SecretData, ADMIN_KEY, API_KEYS_FILE, AUTH_HASH_ANNOTATION,
    REDIS_AUTH_CONF_KEY, REDIS_PASSWORD_HASH_ANNOTATION, REDIS_PASSWORD_KEY,
    REDIS_WORKER_PASSWORD_KEY,
};
use super::rotation::{self, Settled};
use crate::crd::KnowledgeBase;
use crate::{Error, Result};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::ListParams;
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
    /// Access modes of the `spec.bootstrap` backup claim, when there is one.
    pub bootstrap_claim_modes: Option<Vec<String>>,
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
            let data =
                existing_or(&secrets, &names, &names.redis(), generate_redis_password).await?;
            let settled = rollout_settled(client, &names, &data).await?;
            Some(rotation::step(data, settled))
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
        .and_then(|d| d.get(REDIS_WORKER_PASSWORD_KEY))
    {
        hashed.push(redis_password_hashed(&names, &value.0));
    }
    Ok(Dereferenced {
        inputs: Inputs {
            namespace: namespace.to_string(),
            generated_api_keys,
            redis_password,
            secrets_hash: secrets_hash(&hashed),
        },
        missing,
        bootstrap_claim_modes: bootstrap_claim_modes(client, kb, namespace).await?,
    })
}

/// Access modes of the claim `spec.bootstrap.fromBackup.destination.pvc` names (read with
/// `list`, which the operator has on claims); `None` without one or when it is missing.
async fn bootstrap_claim_modes(
    client: &Client,
    kb: &KnowledgeBase,
    namespace: &str,
) -> Result<Option<Vec<String>>> {
    let bootstrap = kb.spec.bootstrap.as_ref();
    let Some(pvc) = bootstrap.and_then(|b| b.from_backup.destination.pvc.as_ref()) else {
        return Ok(None);
    };
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let params = ListParams::default().fields(&format!("metadata.name={}", pvc.claim_name));
    let list = claims.list(&params).await.map_err(|source| Error::Read {
        what: format!("PersistentVolumeClaim {}", pvc.claim_name),
        source: Box::new(source),
    })?;
    Ok(list
        .items
        .into_iter()
        .find(|c| c.metadata.name.as_deref() == Some(pvc.claim_name.as_str()))
        .map(|c| c.spec.and_then(|s| s.access_modes).unwrap_or_default()))
}

/// The worker password's entry in the pod-template hash.
fn redis_password_hashed(names: &Names, password: &[u8]) -> (String, Vec<u8>) {
    (
        format!("{}/{REDIS_WORKER_PASSWORD_KEY}", names.redis()),
        password.to_vec(),
    )
}

/// Whether Redis runs the `auth.conf` of `data` and the workers its `worker-password`
/// (both StatefulSets rolled out and ready), for the next step of a rotation. Only the
/// worker password is compared on the workers: their pod template hashes it with other
/// Secret values, so the comparison uses the annotation of the password alone.
async fn rollout_settled(client: &Client, names: &Names, data: &SecretData) -> Result<Settled> {
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &names.namespace);
    let read = |what: String| {
        move |source| Error::Read {
            what,
            source: Box::new(source),
        }
    };
    let redis = statefulsets
        .get_opt(&names.redis())
        .await
        .map_err(read(format!("StatefulSet {}", names.redis())))?;
    let workers = statefulsets
        .get_opt(&names.worker())
        .await
        .map_err(read(format!("StatefulSet {}", names.worker())))?;
    let template_annotation = |sts: &StatefulSet, key: &str| {
        sts.spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(key).cloned())
    };
    let conf = data.get(REDIS_AUTH_CONF_KEY).map(|c| short_hash(&c.0));
    let worker_password = data
        .get(REDIS_WORKER_PASSWORD_KEY)
        .map(|p| short_hash(&p.0));
    Ok(Settled {
        redis: redis.as_ref().is_some_and(|sts| {
            rolled_out(sts) && template_annotation(sts, AUTH_HASH_ANNOTATION) == conf
        }),
        workers: workers.as_ref().is_some_and(|sts| {
            rolled_out(sts)
                && template_annotation(sts, REDIS_PASSWORD_HASH_ANNOTATION) == worker_password
        }),
    })
}

/// Every replica of `sts` runs its current template and is ready.
fn rolled_out(sts: &StatefulSet) -> bool {
    let Some(status) = &sts.status else {
        return false;
    };
    let wanted = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    status.observed_generation.is_some()
        && status.observed_generation == sts.metadata.generation
        && status.updated_replicas.unwrap_or(0) >= wanted
        && status.ready_replicas.unwrap_or(0) >= wanted
        && status.current_revision.is_some()
        && status.current_revision == status.update_revision
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
            Some(_) => Some(rotation::step(
                generate_redis_password()?,
                Settled::default(),
            )),
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
