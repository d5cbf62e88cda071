//! Builder-style KnowledgeBases for tests.

use super::{Inputs, SecretData, ADMIN_KEY, API_KEYS_FILE, REDIS_PASSWORD_KEY};
use crate::crd::*;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::ByteString;
use std::collections::BTreeMap;

/// The minimal KnowledgeBase (`embedding.device: cpu`) in namespace `default`, as the API
/// server would hand it to the operator (defaults applied, uid set).
pub fn kb(name: &str) -> KnowledgeBase {
    let mut kb: KnowledgeBase = serde_yaml::from_str(&format!(
        "apiVersion: knowledge.dev/v1alpha1\nkind: KnowledgeBase\nmetadata:\n  name: {name}\n  namespace: default\n  uid: uid-{name}\nspec:\n  embedding:\n    device: cpu\n"
    ))
    .expect("fixture parses");
    kb.metadata.generation = Some(1);
    kb
}

/// Inputs as `dereference` gives them for a fresh KnowledgeBase.
pub fn inputs(kb: &KnowledgeBase) -> Inputs {
    let managed = kb.spec.redis.as_ref().is_some_and(|r| r.managed.is_some());
    Inputs {
        secrets_hash: None,
        namespace: "default".into(),
        generated_api_keys: kb.spec.auth.api_keys_secret_ref.is_none().then(|| {
            SecretData::from([
                (
                    API_KEYS_FILE.into(),
                    ByteString(b"- key: k\n  role: admin\n  collections: ['*']\n".to_vec()),
                ),
                (ADMIN_KEY.into(), ByteString(b"k".to_vec())),
            ])
        }),
        redis_password: managed.then(|| {
            crate::reconcile::rotation::step(
                SecretData::from([(REDIS_PASSWORD_KEY.into(), ByteString(b"pw".to_vec()))]),
                Default::default(),
            )
        }),
    }
}

pub fn managed_redis() -> Redis {
    Redis {
        managed: Some(serde_json::from_value(serde_json::json!({})).expect("defaults")),
        external: None,
    }
}

pub fn external_cluster_redis() -> Redis {
    Redis {
        managed: None,
        external: Some(ExternalRedis {
            mode: RedisMode::Cluster,
            url: None,
            nodes: vec!["redis-0.redis:7000".into(), "redis-1.redis:7000".into()],
            sentinel_service: None,
            data_ports: vec![],
            password_secret_ref: Some(SecretKeyRef {
                name: "redis-auth".into(),
                key: "password".into(),
            }),
            tls: true,
            tls_ca_secret_ref: None,
            min_replicas_to_ack: 0,
            replica_ack_timeout_ms: None,
        }),
    }
}

pub fn autoscaling(min: i32, max: i32) -> Autoscaling {
    Autoscaling {
        enabled: true,
        min_replicas: min,
        max_replicas: max,
        target_cpu_utilization_percentage: Some(60),
        target_memory_utilization_percentage: None,
        target_qps_per_pod: Some(50),
        target_embed_queue_depth_per_pod: None,
        behavior: Some(ScalingBehavior {
            scale_up: Some(ScalingRules {
                stabilization_window_seconds: Some(0),
                max_pods_per_minute: Some(2),
                max_percent_per_minute: None,
            }),
            scale_down: Some(ScalingRules {
                stabilization_window_seconds: Some(300),
                max_pods_per_minute: None,
                max_percent_per_minute: Some(50),
            }),
        }),
    }
}

pub fn s3_backup() -> Backup {
    Backup {
        schedule: "0 2 * * *".into(),
        retention: 14,
        suspend: false,
        destination: BackupDestination {
            pvc: None,
            s3: Some(S3Destination {
                bucket: "kb-backups".into(),
                prefix: Some("prod/docs".into()),
                endpoint: Some("https://minio.storage:9000".into()),
                region: Some("eu-west-1".into()),
                credentials_secret_ref: "s3-creds".into(),
            }),
        },
    }
}

pub fn pvc_backup() -> Backup {
    Backup {
        destination: BackupDestination {
            pvc: Some(PvcDestination {
                claim_name: "kb-backups".into(),
            }),
            s3: None,
        },
        ..s3_backup()
    }
}

pub fn selector(key: &str, value: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(BTreeMap::from([(key.to_string(), value.to_string())])),
        ..LabelSelector::default()
    }
}
