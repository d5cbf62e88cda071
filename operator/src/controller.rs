//! The KnowledgeBase controller: watches KnowledgeBases and their children.

use crate::crd::KnowledgeBase;
use crate::reconcile::build::MANAGER;
use crate::reconcile::dereference::referenced_secrets;
use crate::reconcile::{error_policy, reconcile, Context};
use futures::FutureExt;
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
use kube::Client;
use kube::{Api, ResourceExt};
use std::future::Future;
use std::sync::Arc;

/// Where the operator looks for KnowledgeBases and their children.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace (a ClusterRole).
    Cluster,
    /// Only these namespaces (a Role in each): every list and watch is namespaced, so the
    /// operator needs no cluster-wide right.
    Namespaces(Vec<String>),
}

impl Scope {
    /// `Cluster` when `namespaces` is empty.
    pub fn new(namespaces: Vec<String>) -> Self {
        let mut namespaces: Vec<String> = namespaces
            .into_iter()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect();
        namespaces.sort();
        namespaces.dedup();
        match namespaces.is_empty() {
            true => Scope::Cluster,
            false => Scope::Namespaces(namespaces),
        }
    }
}

/// Runs the controller until `shutdown` completes, then finishes in-flight reconciles: one
/// controller over the cluster, or one per namespace of a namespaced scope (sharing the
/// context, so limits such as concurrent upgrades hold across them).
pub async fn run(
    ctx: Arc<Context>,
    scope: &Scope,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let shutdown = shutdown.shared();
    match scope {
        Scope::Cluster => run_in(ctx, None, shutdown).await,
        Scope::Namespaces(namespaces) => {
            futures::future::join_all(
                namespaces.iter().map(|namespace| {
                    run_in(ctx.clone(), Some(namespace.as_str()), shutdown.clone())
                }),
            )
            .await;
        }
    }
}

/// An `Api` over every namespace, or over one.
fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

async fn run_in(
    ctx: Arc<Context>,
    namespace: Option<&str>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    // Only children carry this label, so the operator never caches unrelated Secrets.
    let children =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGER}"));
    let controller = Controller::new(
        api::<KnowledgeBase>(&client, namespace),
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
            api::<PartialObjectMeta<Secret>>(&client, namespace),
            watcher::Config::default(),
            referring,
        )
        .owns(api::<StatefulSet>(&client, namespace), children.clone())
        .owns(api::<Service>(&client, namespace), children.clone())
        .owns(api::<ConfigMap>(&client, namespace), children.clone())
        .owns(api::<Secret>(&client, namespace), children.clone())
        .owns(api::<ServiceAccount>(&client, namespace), children.clone())
        .owns(
            api::<PodDisruptionBudget>(&client, namespace),
            children.clone(),
        )
        .owns(
            api::<HorizontalPodAutoscaler>(&client, namespace),
            children.clone(),
        )
        .owns(api::<NetworkPolicy>(&client, namespace), children.clone())
        .owns(api::<CronJob>(&client, namespace), children.clone())
        // Backup Jobs (scheduled and on demand) finishing update the backup status.
        .owns(api::<Job>(&client, namespace), children)
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
