//! The worker StatefulSet.

use super::names::{Component, Names};
use super::pod::{self, DATA_VOLUME};
use super::secret::{short_hash, REDIS_WORKER_PASSWORD_KEY};
use super::{Child, Inputs};
use crate::crd::KnowledgeBaseSpec;
use crate::reconcile::upgrade::{SPEC_GENERATION_ANNOTATION, TEMPLATE_HASH_ANNOTATION};
use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PodTemplateSpec, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use std::collections::BTreeMap;

/// The worker StatefulSet. With autoscaling on, `spec.replicas` is left out so that the
/// HorizontalPodAutoscaler alone owns it. Its annotations tell which pod template it was
/// applied with and for which KnowledgeBase generation (see `reconcile::upgrade`).
pub(super) fn build(
    spec: &KnowledgeBaseSpec,
    generation: Option<i64>,
    names: &Names,
    config_hash: &str,
    inputs: &Inputs,
) -> Child {
    let replicas = (!spec.autoscaling_enabled()).then_some(spec.replicas);
    let mut template = pod::template(spec, names, config_hash, inputs.secrets_hash.as_deref());
    let worker_password = inputs
        .redis_password
        .as_ref()
        .and_then(|d| d.get(REDIS_WORKER_PASSWORD_KEY));
    if let (Some(password), Some(meta)) = (worker_password, template.metadata.as_mut()) {
        meta.annotations
            .get_or_insert_with(Default::default)
            .insert(
                pod::REDIS_PASSWORD_HASH_ANNOTATION.to_string(),
                short_hash(&password.0),
            );
    }
    let mut metadata = names.meta(names.worker(), Component::Worker);
    let mut annotations = BTreeMap::from([(
        TEMPLATE_HASH_ANNOTATION.to_string(),
        template_hash(&template),
    )]);
    if let Some(generation) = generation {
        annotations.insert(
            SPEC_GENERATION_ANNOTATION.to_string(),
            generation.to_string(),
        );
    }
    metadata.annotations = Some(annotations);
    Child::StatefulSet(Box::new(StatefulSet {
        metadata,
        spec: Some(StatefulSetSpec {
            replicas,
            service_name: Some(names.headless()),
            selector: LabelSelector {
                match_labels: Some(names.selector(Component::Worker)),
                ..LabelSelector::default()
            },
            // Replicas bootstrap independently from a peer's snapshot; no need to serialise.
            pod_management_policy: Some("Parallel".to_string()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".to_string()),
                ..StatefulSetUpdateStrategy::default()
            }),
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some(spec.storage.reclaim_policy.as_str().to_string()),
                    when_scaled: Some("Retain".to_string()),
                },
            ),
            template,
            volume_claim_templates: Some(vec![data_claim(spec, names)]),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }))
}

/// SHA-256 (first 8 bytes) of the pod template without the Secrets hashes: what changes
/// when the spec or the operator's release changes the pods, not when a Secret rotates.
fn template_hash(template: &PodTemplateSpec) -> String {
    use sha2::Digest;
    let mut template = template.clone();
    if let Some(annotations) = template
        .metadata
        .as_mut()
        .and_then(|m| m.annotations.as_mut())
    {
        annotations.remove(pod::SECRETS_HASH_ANNOTATION);
        annotations.remove(pod::REDIS_PASSWORD_HASH_ANNOTATION);
    }
    let json = serde_json::to_string(&template).expect("a pod template serialises");
    sha2::Sha256::digest(json.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn data_claim(spec: &KnowledgeBaseSpec, names: &Names) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(DATA_VOLUME.to_string()),
            labels: Some(names.labels(Component::Worker)),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_string()]),
            storage_class_name: spec.storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    spec.storage.size.clone(),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}
