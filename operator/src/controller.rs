//! The KnowledgeBase controller: watches KnowledgeBases and their children.

use crate::crd::KnowledgeBase;
use crate::reconcile::build::MANAGER;
use crate::reconcile::dereference::referenced_secrets;
use crate::reconcile::{error_policy, reconcile, Context};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Api, ResourceExt};
use std::future::Future;
use std::sync::Arc;

/// Runs the controller until `shutdown` completes, then finishes in-flight reconciles.
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let client = ctx.client.clone();
    // Only children carry this label, so the operator never caches unrelated Secrets.
    let children =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGER}"));
    let controller = Controller::new(
        Api::<KnowledgeBase>::all(client.clone()),
        watcher::Config::default(),
    );
    // Secrets the specs name (API keys, Redis password and CA, S3 credentials): a change
    // re-reconciles the KnowledgeBases that refer to them, so a rotation rolls the workers
    // (their pod template carries a hash of what they read at start). Watched as metadata
    // only (names and resourceVersions, never the data of the cluster's Secrets); events
    // are mapped and dropped, nothing is cached. The Secrets a spec names are read when
    // their KnowledgeBase is reconciled.
    let knowledge_bases = controller.store();
    let referring = move |secret: PartialObjectMeta<Secret>| {
        let namespace = secret.namespace();
        let name = secret.name_any();
        knowledge_bases
            .state()
            .into_iter()
            .filter(|kb| kb.namespace() == namespace)
            .filter(|kb| referenced_secrets(kb).contains(&name))
            .map(|kb| ObjectRef::from_obj(kb.as_ref()))
            .collect::<Vec<_>>()
    };
    controller
        .watches(
            Api::<PartialObjectMeta<Secret>>::all(client.clone()),
            watcher::Config::default(),
            referring,
        )
        .owns(Api::<StatefulSet>::all(client.clone()), children.clone())
        .owns(Api::<Service>::all(client.clone()), children.clone())
        .owns(Api::<ConfigMap>::all(client.clone()), children.clone())
        .owns(Api::<Secret>::all(client.clone()), children.clone())
        .owns(Api::<ServiceAccount>::all(client.clone()), children.clone())
        .owns(
            Api::<PodDisruptionBudget>::all(client.clone()),
            children.clone(),
        )
        .owns(
            Api::<HorizontalPodAutoscaler>::all(client.clone()),
            children.clone(),
        )
        .owns(Api::<NetworkPolicy>::all(client.clone()), children.clone())
        .owns(Api::<CronJob>::all(client.clone()), children.clone())
        // Backup Jobs (scheduled and on demand) finishing update the backup status.
        .owns(Api::<Job>::all(client), children)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(kb = %object.name, "reconciled"),
                Err(error) => tracing::debug!(%error, "reconcile did not complete"),
            }
        })
        .await;
}
