//! The worker pod template: container, probes, volumes, environment.

use super::config_map::{
    pinned_key, CONFIG_DIR, CONFIG_FILE, CONFIG_HASH_ANNOTATION, DATA_DIR, KEYS_DIR, MODELS_DIR,
    MODEL_REF_ENV, PEER_API_KEY_ENV, REDIS_CA_DIR, REDIS_CA_FILE, REDIS_PASSWORD_ENV,
    RERANKERS_DIR, WANTED_MODEL_DIR, WANTED_MODEL_FILE, WANTED_MODEL_FILE_ENV, WANTED_MODEL_KEY,
};
use super::names::{Component, Names, HTTP_PORT, METRICS_PORT};
use super::secret::{ADMIN_KEY, REDIS_WORKER_PASSWORD_KEY};
use super::{scheduling, security};
use crate::crd::{KnowledgeBaseSpec, ModelVolume};
use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, LocalObjectReference, ObjectFieldSelector,
    PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec, Probe, SecretKeySelector,
    SecretVolumeSource, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Name of the data volume (and of the StatefulSet's claim template).
pub(super) const DATA_VOLUME: &str = "data";

/// Pod-template annotation: hash of the managed-Redis password the workers present (a
/// rotation waits until every worker runs with it; `reconcile::rotation`).
pub const REDIS_PASSWORD_HASH_ANNOTATION: &str = "knowledge.dev/redis-password-hash";

/// Pod-template annotation: hash of the Secret values the workers read at start.
pub const SECRETS_HASH_ANNOTATION: &str = "knowledge.dev/secrets-hash";

/// The worker pod template; `config_hash` rolls the pods when the configuration changes,
/// `secrets_hash` when a Secret they read at start does.
pub(super) fn template(
    spec: &KnowledgeBaseSpec,
    names: &Names,
    config_hash: &str,
    secrets_hash: Option<&str>,
) -> PodTemplateSpec {
    let mut labels = spec.pod_labels.clone();
    labels.extend(names.labels(Component::Worker));
    let mut annotations = spec.pod_annotations.clone();
    annotations.insert(CONFIG_HASH_ANNOTATION.to_string(), config_hash.to_string());
    if let Some(hash) = secrets_hash {
        annotations.insert(SECRETS_HASH_ANNOTATION.to_string(), hash.to_string());
    }
    let mut pod = PodSpec {
        service_account_name: Some(names.worker()),
        automount_service_account_token: Some(false),
        security_context: Some(security::pod(security::RUN_AS_USER)),
        init_containers: restore_container(spec).map(|c| vec![c]),
        containers: vec![container(spec, names)],
        volumes: Some(volumes(spec, names, config_hash)),
        termination_grace_period_seconds: Some(30),
        image_pull_secrets: pull_secrets(spec),
        ..PodSpec::default()
    };
    scheduling::apply(spec, names, &mut pod);
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(pod),
    }
}

/// `imagePullSecrets` of the spec, or `None` when there are none.
pub(super) fn pull_secrets(spec: &KnowledgeBaseSpec) -> Option<Vec<LocalObjectReference>> {
    let secrets: Vec<_> = spec
        .image_pull_secrets
        .iter()
        .map(|name| LocalObjectReference { name: name.clone() })
        .collect();
    (!secrets.is_empty()).then_some(secrets)
}

fn container(spec: &KnowledgeBaseSpec, names: &Names) -> Container {
    Container {
        name: "worker".to_string(),
        image: Some(spec.worker_image()),
        image_pull_policy: spec.image_pull_policy.map(|p| p.as_str().to_string()),
        command: Some(vec![
            "kb-worker".to_string(),
            "serve".to_string(),
            "--config".to_string(),
            format!("{CONFIG_DIR}/{CONFIG_FILE}"),
        ]),
        ports: Some(vec![
            container_port("http", HTTP_PORT),
            container_port("metrics", METRICS_PORT),
        ]),
        env: env(spec, names),
        resources: scheduling::resources(spec),
        liveness_probe: Some(probe("/livez", 3, 10)),
        readiness_probe: Some(probe("/readyz", 3, 5)),
        // A worker that fails to start says why on its last log line (`error: ...`); the
        // operator reports it in the Degraded condition.
        termination_message_policy: Some("FallbackToLogsOnError".to_string()),
        // Model load can take minutes on a cold node: allow up to 10 minutes.
        startup_probe: Some(probe("/livez", 60, 10)),
        security_context: Some(security::container()),
        volume_mounts: Some(mounts(spec)),
        ..Container::default()
    }
}

/// Mount point of a PVC that `bootstrap.fromBackup` restores from.
pub const RESTORE_DIR: &str = "/restore";

/// `bootstrap.fromBackup`: restores the backup into an empty data volume before the
/// worker starts (`--if-empty`: a volume that holds data is left alone, so every later
/// start of the pod, and every volume after its first start, skips it).
fn restore_container(spec: &KnowledgeBaseSpec) -> Option<Container> {
    let from = &spec.bootstrap.as_ref()?.from_backup;
    let s3 = from.destination.s3.as_ref();
    let mut mounts = vec![
        mount(DATA_VOLUME, DATA_DIR, false),
        mount("tmp", "/tmp", false),
    ];
    if from.destination.pvc.is_some() {
        mounts.push(mount("restore-source", RESTORE_DIR, true));
    }
    Some(Container {
        name: "restore".to_string(),
        image: Some(spec.worker_image()),
        image_pull_policy: spec.image_pull_policy.map(|p| p.as_str().to_string()),
        command: Some(vec![
            "kb-worker".to_string(),
            "restore".to_string(),
            "--from".to_string(),
            from.source(RESTORE_DIR),
            "--data-dir".to_string(),
            DATA_DIR.to_string(),
            "--if-empty".to_string(),
        ]),
        env: s3.map(super::cronjob::s3_env),
        env_from: s3.map(super::cronjob::s3_credentials),
        security_context: Some(security::container()),
        volume_mounts: Some(mounts),
        ..Container::default()
    })
}

fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_string()),
        container_port: port,
        protocol: Some("TCP".to_string()),
        ..ContainerPort::default()
    }
}

fn probe(path: &str, failure_threshold: i32, period_seconds: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String("http".to_string()),
            ..HTTPGetAction::default()
        }),
        failure_threshold: Some(failure_threshold),
        period_seconds: Some(period_seconds),
        timeout_seconds: Some(3),
        ..Probe::default()
    }
}

/// `KB_ON_MODEL_MISMATCH=reindex`: a worker whose model is not its data's re-indexes the
/// stored texts for its model, unready until done, while the pods not yet rolled serve
/// (docs/operator.md, Changing the model); data it cannot re-index stops it with the
/// reason, which `Degraded` shows as `ModelMismatch` (an environment variable rather than
/// a config key, so that older worker images, which ignore it, still read the ConfigMap).
/// `KB_MODEL_REF` (this revision's model) and `KB_WANTED_MODEL_FILE` (the model the
/// KnowledgeBase wants now, updated in place) let a worker of a model the spec left
/// re-index nothing: an old pod that restarts after the new model's swap waits to be
/// replaced instead of re-indexing the data back.
/// Replicated mode adds the Redis password, the admin key for peer snapshots, and the pod
/// name that identifies the replica in the heartbeat registry.
fn env(spec: &KnowledgeBaseSpec, names: &Names) -> Option<Vec<EnvVar>> {
    let value = |name: &str, value: String| EnvVar {
        name: name.to_string(),
        value: Some(value),
        ..EnvVar::default()
    };
    let mut env = vec![
        value("KB_ON_MODEL_MISMATCH", "reindex".to_string()),
        value(MODEL_REF_ENV, spec.embedding.model_ref()),
        value(
            WANTED_MODEL_FILE_ENV,
            format!("{WANTED_MODEL_DIR}/{WANTED_MODEL_FILE}"),
        ),
    ];
    env.extend(replica_env(spec, names).into_iter().flatten());
    Some(env)
}

fn replica_env(spec: &KnowledgeBaseSpec, names: &Names) -> Option<Vec<EnvVar>> {
    spec.redis.as_ref()?;
    let keys_secret = spec
        .auth
        .api_keys_secret_ref
        .clone()
        .unwrap_or_else(|| names.api_keys());
    let mut env = vec![
        EnvVar {
            name: "POD_NAME".to_string(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".to_string(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        },
        secret_env(PEER_API_KEY_ENV, keys_secret, ADMIN_KEY.to_string()),
    ];
    env.extend(redis_password_env(spec, names));
    Some(env)
}

fn secret_env(name: &str, secret: String, key: String) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret,
                key,
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// `KB_REDIS_PASSWORD` from the managed-Redis Secret or the external password Secret.
fn redis_password_env(spec: &KnowledgeBaseSpec, names: &Names) -> Option<EnvVar> {
    let redis = spec.redis.as_ref()?;
    let (name, key) = match (&redis.managed, &redis.external) {
        (Some(_), _) => (names.redis(), REDIS_WORKER_PASSWORD_KEY.to_string()),
        (None, Some(external)) => {
            let secret = external.password_secret_ref.as_ref()?;
            (secret.name.clone(), secret.key.clone())
        }
        (None, None) => return None,
    };
    Some(secret_env(REDIS_PASSWORD_ENV, name, key))
}

fn mounts(spec: &KnowledgeBaseSpec) -> Vec<VolumeMount> {
    // The file alone (subPath): a directory mount at /etc/kb would hide the keys mount
    // point inside a read-only ConfigMap volume. Config changes roll the pods anyway.
    let config = VolumeMount {
        sub_path: Some(CONFIG_FILE.to_string()),
        ..mount("config", &format!("{CONFIG_DIR}/{CONFIG_FILE}"), true)
    };
    let mut mounts = vec![
        config,
        mount(WANTED_MODEL_VOLUME, WANTED_MODEL_DIR, true),
        mount("api-keys", KEYS_DIR, true),
        mount(DATA_VOLUME, DATA_DIR, false),
        mount("tmp", "/tmp", false),
    ];
    if spec.embedding.model_volume.is_some() {
        mounts.push(mount("models", MODELS_DIR, true));
    }
    if reranker_volume(spec).is_some() {
        mounts.push(mount(RERANKER_VOLUME, RERANKERS_DIR, true));
    }
    if redis_ca(spec).is_some() {
        mounts.push(mount("redis-ca", REDIS_CA_DIR, true));
    }
    mounts
}

/// The Secret key of an external Redis' private CA, if one is set.
fn redis_ca(spec: &KnowledgeBaseSpec) -> Option<&crate::crd::CaSecretRef> {
    spec.redis
        .as_ref()?
        .external
        .as_ref()?
        .tls_ca_secret_ref
        .as_ref()
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    }
}

/// Name of the volume holding the wanted model (the worker ConfigMap's key, mounted as a
/// directory so the kubelet updates it in place).
const WANTED_MODEL_VOLUME: &str = "wanted-model";

/// One key of the worker ConfigMap as a file.
fn config_map_volume(name: &str, names: &Names, key: String, path: &str) -> Volume {
    Volume {
        name: name.to_string(),
        config_map: Some(ConfigMapVolumeSource {
            name: names.worker(),
            items: Some(vec![KeyToPath {
                key,
                path: path.to_string(),
                mode: None,
            }]),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// The pod's volumes; `config_hash` picks the revision's own configuration
/// ([`pinned_key`]) out of the worker ConfigMap.
fn volumes(spec: &KnowledgeBaseSpec, names: &Names, config_hash: &str) -> Vec<Volume> {
    let keys_secret = spec
        .auth
        .api_keys_secret_ref
        .clone()
        .unwrap_or_else(|| names.api_keys());
    let mut volumes = vec![
        config_map_volume("config", names, pinned_key(config_hash), CONFIG_FILE),
        config_map_volume(
            WANTED_MODEL_VOLUME,
            names,
            WANTED_MODEL_KEY.to_string(),
            WANTED_MODEL_FILE,
        ),
        Volume {
            name: "api-keys".to_string(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(keys_secret),
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "tmp".to_string(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
    ];
    if let Some(model) = &spec.embedding.model_volume {
        volumes.push(model_volume(model));
    }
    if let Some(model) = reranker_volume(spec) {
        volumes.push(Volume {
            name: RERANKER_VOLUME.to_string(),
            ..model_volume(model)
        });
    }
    let restore_pvc = spec
        .bootstrap
        .as_ref()
        .and_then(|b| b.from_backup.destination.pvc.as_ref());
    if let Some(pvc) = restore_pvc {
        volumes.push(Volume {
            name: "restore-source".to_string(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: pvc.claim_name.clone(),
                read_only: Some(true),
            }),
            ..Volume::default()
        });
    }
    if let Some(ca) = redis_ca(spec) {
        volumes.push(Volume {
            name: "redis-ca".to_string(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(ca.name.clone()),
                items: Some(vec![KeyToPath {
                    key: ca.key.clone(),
                    path: REDIS_CA_FILE.to_string(),
                    ..KeyToPath::default()
                }]),
                default_mode: Some(0o444),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    volumes
}

/// The pod volume of `spec.reranker.modelVolume`.
const RERANKER_VOLUME: &str = "reranker-model";

fn reranker_volume(spec: &KnowledgeBaseSpec) -> Option<&ModelVolume> {
    spec.reranker.as_ref()?.model_volume.as_ref()
}

fn model_volume(model: &ModelVolume) -> Volume {
    Volume {
        name: "models".to_string(),
        persistent_volume_claim: model.persistent_volume_claim.clone(),
        image: model.image.clone(),
        nfs: model.nfs.clone(),
        ..Volume::default()
    }
}
