//! Rules the CRD schema cannot express (references, names) and, for offline rendering, the
//! schema's own CEL rules. A failure becomes `Degraded` with the reason and message.

use super::dereference::MissingReference;
use crate::crd::{Device, KnowledgeBase};

/// Longest KnowledgeBase name: StatefulSet pod and revision names add up to 23 characters.
pub const MAX_NAME_LEN: usize = 40;

/// Why a KnowledgeBase cannot be reconciled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// CamelCase reason for the `Degraded` condition.
    pub reason: &'static str,
    pub message: String,
}

fn invalid(reason: &'static str, message: impl Into<String>) -> Result<(), Invalid> {
    Err(Invalid {
        reason,
        message: message.into(),
    })
}

/// A bootstrap from a backup claim that only one node can mount, for a KnowledgeBase that
/// can run several replicas: every worker's init container mounts the claim, so pods on
/// other nodes would wait forever. `access_modes` are the claim's (`None`: no such
/// bootstrap, or the claim is missing, which the restore reports itself).
pub fn check_bootstrap_claim(
    kb: &KnowledgeBase,
    access_modes: Option<&[String]>,
) -> Result<(), Invalid> {
    let Some(modes) = access_modes else {
        return Ok(());
    };
    let shared = modes
        .iter()
        .any(|m| m == "ReadOnlyMany" || m == "ReadWriteMany");
    if shared || !kb.spec.may_run_several() {
        return Ok(());
    }
    let claim = kb
        .spec
        .bootstrap
        .as_ref()
        .and_then(|b| b.from_backup.destination.pvc.as_ref())
        .map(|p| p.claim_name.as_str())
        .unwrap_or_default();
    invalid(
        "BootstrapClaimNotShared",
        format!(
            "spec.bootstrap.fromBackup.destination.pvc {claim} is {}: with more than one \
             replica, workers on other nodes cannot mount it to restore; use a ReadOnlyMany or \
             ReadWriteMany claim or S3, or start with replicas: 1 (and no autoscaling) and \
             scale out once it is Ready (new replicas bootstrap from a peer)",
            modes.join(", ")
        ),
    )
}

/// Checks `kb` and the references `dereference` could not resolve.
pub fn check(kb: &KnowledgeBase, missing: &[MissingReference]) -> Result<(), Invalid> {
    check_name(kb.metadata.name.as_deref().unwrap_or_default())?;
    check_spec(kb)?;
    if let Some(m) = missing.first() {
        let message = match &m.key {
            None => format!("Secret {} named by {} does not exist", m.secret, m.field),
            Some(key) => format!("Secret {} named by {} has no key {key}", m.secret, m.field),
        };
        return invalid("SecretNotFound", message);
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), Invalid> {
    let dns_label = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-');
    if name.len() > MAX_NAME_LEN || !dns_label {
        return invalid(
            "InvalidName",
            format!("name {name:?} must be a DNS label of at most {MAX_NAME_LEN} characters starting with a letter"),
        );
    }
    Ok(())
}

/// The CEL rules of the schema, for objects that did not pass through an API server.
fn check_spec(kb: &KnowledgeBase) -> Result<(), Invalid> {
    let spec = &kb.spec;
    if spec.may_run_several() && spec.redis.is_none() {
        return invalid("RedisRequired", "more than one replica requires spec.redis");
    }
    if let Some(a) = spec
        .autoscaling
        .as_ref()
        .filter(|a| a.min_replicas > a.max_replicas)
    {
        return invalid(
            "InvalidAutoscaling",
            format!(
                "autoscaling.minReplicas ({}) exceeds maxReplicas ({})",
                a.min_replicas, a.max_replicas
            ),
        );
    }
    let surge = spec.embedding.rollout.as_ref().and_then(|r| r.max_surge);
    if surge.is_some_and(|s| s > 0) && spec.redis.is_none() {
        return invalid(
            "InvalidRollout",
            "embedding.rollout.maxSurge above 0 requires spec.redis (added workers replicate \
             through Redis; set 0 to replace the workers in place)",
        );
    }
    if spec.embedding.gpus_per_replica.is_some() && spec.embedding.device != Device::Cuda {
        return invalid(
            "InvalidEmbedding",
            "embedding.gpusPerReplica requires embedding.device: cuda",
        );
    }
    if let Some(redis) = &spec.redis {
        if redis.managed.is_some() == redis.external.is_some() {
            return invalid(
                "InvalidRedis",
                "set exactly one of redis.managed or redis.external",
            );
        }
    }
    if let Some(backup) = &spec.backup {
        if backup.destination.pvc.is_some() == backup.destination.s3.is_some() {
            return invalid(
                "InvalidBackup",
                "set exactly one of backup.destination.pvc or backup.destination.s3",
            );
        }
    }
    if let Some(bootstrap) = &spec.bootstrap {
        let destination = &bootstrap.from_backup.destination;
        if destination.pvc.is_some() == destination.s3.is_some() {
            return invalid(
                "InvalidBootstrap",
                "set exactly one of bootstrap.fromBackup.destination.pvc or .s3",
            );
        }
    }
    let names = super::build::Names::new(kb, "default");
    super::build::worker_config(spec, &names)
        .validate()
        .or_else(|e| invalid("InvalidWorkerConfig", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::build::fixtures::kb;

    #[test]
    fn long_or_uppercase_names_are_invalid() {
        assert_eq!(
            check(&kb("a".repeat(41).as_str()), &[]).unwrap_err().reason,
            "InvalidName"
        );
        assert_eq!(check(&kb("Docs"), &[]).unwrap_err().reason, "InvalidName");
        assert!(check(&kb("docs-2"), &[]).is_ok());
    }

    #[test]
    fn several_replicas_without_redis_are_invalid() {
        let mut kb = kb("docs");
        kb.spec.replicas = 3;
        assert_eq!(check(&kb, &[]).unwrap_err().reason, "RedisRequired");
    }

    #[test]
    fn a_model_surge_needs_redis() {
        let mut kb = kb("docs");
        kb.spec.embedding.rollout = Some(crate::crd::ModelRolloutPolicy { max_surge: Some(1) });
        assert_eq!(check(&kb, &[]).unwrap_err().reason, "InvalidRollout");
        assert_eq!(kb.spec.model_surge(), 1, "explicit");
        kb.spec.embedding.rollout = None;
        assert_eq!(kb.spec.model_surge(), 0, "no Redis: in place by default");
        kb.spec.redis = Some(serde_json::from_str(r#"{"managed": {}}"#).unwrap());
        assert!(check(&kb, &[]).is_ok());
        assert_eq!(
            kb.spec.model_surge(),
            1,
            "with Redis: one added worker by default"
        );
        kb.spec.autoscaling = Some(serde_json::from_str(r#"{"maxReplicas": 4}"#).unwrap());
        assert_eq!(
            kb.spec.model_surge(),
            1,
            "autoscaled: the autoscaler's floor is raised for the change"
        );
        kb.spec.embedding.rollout = Some(crate::crd::ModelRolloutPolicy { max_surge: Some(2) });
        assert!(check(&kb, &[]).is_ok(), "autoscaled with Redis");
        kb.spec.embedding.rollout = Some(crate::crd::ModelRolloutPolicy { max_surge: Some(0) });
        assert!(check(&kb, &[]).is_ok());
    }

    #[test]
    fn missing_secret_is_named_in_the_message() {
        let missing = [MissingReference {
            field: "spec.auth.apiKeysSecretRef",
            secret: "my-keys".into(),
            key: Some("admin-key".into()),
        }];
        let err = check(&kb("docs"), &missing).unwrap_err();
        assert_eq!(err.reason, "SecretNotFound");
        assert!(
            err.message.contains("my-keys") && err.message.contains("admin-key"),
            "{}",
            err.message
        );
    }

    #[test]
    fn overlap_not_below_chunk_size_is_invalid() {
        let mut kb = kb("docs");
        kb.spec.chunking.overlap = kb.spec.chunking.max_tokens;
        assert_eq!(check(&kb, &[]).unwrap_err().reason, "InvalidWorkerConfig");
    }
}
