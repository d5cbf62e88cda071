//! Managed Redis: ConfigMap, password Secret, Service and a single-node StatefulSet.

use super::names::{Component, Names, REDIS_PORT};
use super::secret::{self, REDIS_AUTH_CONF_KEY, REDIS_PASSWORD_KEY};
use super::service::port;
use super::{config_map, security, Child, ChildKind, Plan, SecretData};
use crate::crd::{KnowledgeBaseSpec, ManagedRedis};
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource, ExecAction,
    KeyToPath, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSpec, PodTemplateSpec, Probe,
    SecretKeySelector, SecretVolumeSource, Service, ServiceSpec, TCPSocketAction, Volume,
    VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

/// User of the official Redis image.
const REDIS_USER: i64 = 999;
const CONFIG_KEY: &str = "redis.conf";
/// Where the Secret's `auth.conf` is mounted in the Redis container.
const AUTH_DIR: &str = "/etc/redis-auth";

/// Adds the managed-Redis children, or prunes them when Redis is not managed.
pub(super) fn add_to_plan(
    plan: &mut Plan,
    spec: &KnowledgeBaseSpec,
    names: &Names,
    password: Option<SecretData>,
) {
    let managed = spec.redis.as_ref().and_then(|r| r.managed.as_ref());
    let (managed, password) = match (managed, password) {
        (Some(managed), Some(password)) => (managed, password),
        _ => {
            for kind in [
                ChildKind::ConfigMap,
                ChildKind::Secret,
                ChildKind::Service,
                ChildKind::StatefulSet,
                ChildKind::PodDisruptionBudget,
            ] {
                plan.add(kind, names.redis(), None);
            }
            return;
        }
    };
    let config = config(managed, names);
    let hash = config_map::config_hash(&config);
    let auth = password.get(REDIS_AUTH_CONF_KEY).map(|c| c.0.clone());
    plan.children.extend([
        Child::ConfigMap(config),
        secret::redis_password(names, password),
        service(names),
        statefulset(managed, names, &hash, auth.as_deref()),
    ]);
    // No PodDisruptionBudget: with one Redis, `minAvailable: 1` could never be satisfied
    // and would block every node drain forever. A drain moves Redis like any pod: writes
    // pause until it runs again on another node (its volume follows it), reads go on.
    plan.add(ChildKind::PodDisruptionBudget, names.redis(), None);
}

/// `redis.conf`: append-only with an fsync per write (a worker acknowledges a write once it
/// is in the stream, so an `everysec` window could lose acknowledged writes on a crash), and
/// only keys with a TTL — the cache — may be evicted, never the log streams.
fn config(managed: &ManagedRedis, names: &Names) -> ConfigMap {
    let mut conf = format!(
        "bind 0.0.0.0\nport {REDIS_PORT}\ndir /data\nappendonly yes\nappendfsync always\nmaxmemory-policy volatile-lru\ninclude {AUTH_DIR}/{REDIS_AUTH_CONF_KEY}\n"
    );
    if let Some(max_memory) = &managed.max_memory {
        conf.push_str(&format!("maxmemory {max_memory}\n"));
    }
    ConfigMap {
        metadata: names.meta(names.redis(), Component::Redis),
        data: Some(BTreeMap::from([(CONFIG_KEY.to_string(), conf)])),
        ..ConfigMap::default()
    }
}

fn service(names: &Names) -> Child {
    Child::Service(Service {
        metadata: names.meta(names.redis(), Component::Redis),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_string()),
            selector: Some(names.selector(Component::Redis)),
            ports: Some(vec![port("redis", REDIS_PORT)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}

/// Redis pod-template annotation: hash of the `auth.conf` it starts with, so a step of a
/// password rotation restarts it (`reconcile::rotation`).
pub const AUTH_HASH_ANNOTATION: &str = "knowledge.dev/auth-hash";

fn statefulset(
    managed: &ManagedRedis,
    names: &Names,
    config_hash: &str,
    auth: Option<&[u8]>,
) -> Child {
    let mut annotations = BTreeMap::from([(
        super::CONFIG_HASH_ANNOTATION.to_string(),
        config_hash.to_string(),
    )]);
    if let Some(conf) = auth {
        annotations.insert(AUTH_HASH_ANNOTATION.to_string(), secret::short_hash(conf));
    }
    let template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(names.labels(Component::Redis)),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            automount_service_account_token: Some(false),
            security_context: Some(security::pod(REDIS_USER)),
            containers: vec![container(managed, names)],
            volumes: Some(vec![
                Volume {
                    name: "config".to_string(),
                    config_map: Some(ConfigMapVolumeSource {
                        name: names.redis(),
                        ..ConfigMapVolumeSource::default()
                    }),
                    ..Volume::default()
                },
                Volume {
                    name: "auth".to_string(),
                    secret: Some(SecretVolumeSource {
                        secret_name: Some(names.redis()),
                        items: Some(vec![KeyToPath {
                            key: REDIS_AUTH_CONF_KEY.to_string(),
                            path: REDIS_AUTH_CONF_KEY.to_string(),
                            ..KeyToPath::default()
                        }]),
                        default_mode: Some(0o440),
                        ..SecretVolumeSource::default()
                    }),
                    ..Volume::default()
                },
            ]),
            ..PodSpec::default()
        }),
    };
    Child::StatefulSet(Box::new(StatefulSet {
        metadata: names.meta(names.redis(), Component::Redis),
        spec: Some(StatefulSetSpec {
            replicas: Some(1),
            service_name: Some(names.redis()),
            selector: LabelSelector {
                match_labels: Some(names.selector(Component::Redis)),
                ..LabelSelector::default()
            },
            template,
            volume_claim_templates: Some(vec![claim(managed, names)]),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }))
}

fn container(managed: &ManagedRedis, names: &Names) -> Container {
    let mount = |name: &str, path: &str| VolumeMount {
        name: name.to_string(),
        mount_path: path.to_string(),
        ..VolumeMount::default()
    };
    Container {
        name: "redis".to_string(),
        image: Some(managed.image.clone()),
        // The password comes from the Secret's auth.conf (included by redis.conf), so it is
        // neither in the ConfigMap nor on the command line (`ps`, /proc/*/cmdline).
        command: Some(
            ["redis-server", "/etc/redis/redis.conf"]
                .map(String::from)
                .to_vec(),
        ),
        env: Some(vec![EnvVar {
            name: "REDIS_PASSWORD".to_string(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: names.redis(),
                    key: REDIS_PASSWORD_KEY.to_string(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }]),
        ports: Some(vec![ContainerPort {
            name: Some("redis".to_string()),
            container_port: REDIS_PORT,
            protocol: Some("TCP".to_string()),
            ..ContainerPort::default()
        }]),
        liveness_probe: Some(liveness()),
        readiness_probe: Some(readiness()),
        resources: managed.resources.clone(),
        security_context: Some(security::container()),
        volume_mounts: Some(vec![
            mount("config", "/etc/redis"),
            VolumeMount {
                read_only: Some(true),
                ..mount("auth", AUTH_DIR)
            },
            mount("data", "/data"),
        ]),
        ..Container::default()
    }
}

fn liveness() -> Probe {
    Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::String("redis".to_string()),
            ..TCPSocketAction::default()
        }),
        period_seconds: Some(10),
        ..Probe::default()
    }
}

/// Ready once Redis answers an authenticated PING.
fn readiness() -> Probe {
    // REDISCLI_AUTH, not -a: the password stays off the probe's command line too.
    let ping = "REDISCLI_AUTH=\"$REDIS_PASSWORD\" redis-cli ping | grep -q PONG";
    Probe {
        exec: Some(ExecAction {
            command: Some(["sh", "-c", ping].map(String::from).to_vec()),
        }),
        period_seconds: Some(5),
        ..Probe::default()
    }
}

fn claim(managed: &ManagedRedis, names: &Names) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("data".to_string()),
            labels: Some(names.labels(Component::Redis)),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_string()]),
            storage_class_name: managed.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    managed.storage_size.clone(),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}
