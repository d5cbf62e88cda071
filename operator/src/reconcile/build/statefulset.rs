//! The worker StatefulSet.

use super::names::{Component, Names};
use super::pod::{self, DATA_VOLUME};
use super::Child;
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
    secrets_hash: Option<&str>,
) -> Child {
    let replicas = (!spec.autoscaling_enabled()).then_some(spec.replicas);
    let template = pod::template(spec, names, config_hash, secrets_hash);
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

/// SHA-256 (first 8 bytes) of the pod template without the Secrets hash: what changes
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
