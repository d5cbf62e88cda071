//! An in-memory API server (kube-fake-client) with write counting and fault injection.
// Each test crate that includes this module uses a different subset of it.
#![allow(dead_code)]

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kb_operator::crd::KnowledgeBase;
use kb_operator::metrics::Metrics;
use kb_operator::reconcile::{reconcile, Context};
use kube::runtime::controller::Action;
use kube::{Api, Client, Resource, ResourceExt};
use kube_fake_client::{interceptor, ClientBuilder};
use serde::de::DeserializeOwned;
use std::collections::BTreeSet;
use std::fmt::Debug;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Counts of write requests seen by the fake API server, and of faults it injected.
#[derive(Default)]
pub struct Writes {
    writes: AtomicUsize,
    faults: AtomicUsize,
}

impl Writes {
    /// Writes since the last call.
    pub fn take(&self) -> usize {
        self.writes.swap(0, Ordering::SeqCst)
    }
    /// Faults injected so far.
    pub fn faults(&self) -> usize {
        self.faults.load(Ordering::SeqCst)
    }
    fn bump(&self) {
        self.writes.fetch_add(1, Ordering::SeqCst);
    }
}

/// Faults: about one in `every` patches fails with a conflict, one in `every` reads and
/// deletes with a 500.
#[derive(Clone, Copy)]
pub struct Faults {
    pub every: usize,
}

/// A KnowledgeBase parsed from YAML `spec`, in namespace `default`.
pub fn kb(name: &str, spec: &str) -> KnowledgeBase {
    let indented: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    serde_yaml::from_str(&format!(
        "apiVersion: knowledge.dev/v1alpha1\nkind: KnowledgeBase\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n{indented}"
    ))
    .unwrap()
}

/// A fake cluster holding `objects`, and the counter of its write requests.
pub async fn cluster(faults: Option<Faults>) -> (Client, Arc<Writes>) {
    cluster_with(faults, false).await
}

/// [`cluster`] whose objects come back with `metadata.managedFields` (server-side apply
/// field ownership, as the in-memory API tracks it).
pub async fn cluster_with_managed_fields() -> (Client, Arc<Writes>) {
    cluster_with(None, true).await
}

async fn cluster_with(faults: Option<Faults>, managed_fields: bool) -> (Client, Arc<Writes>) {
    let writes = Arc::new(Writes::default());
    let calls = Arc::new(AtomicUsize::new(0));
    // A multiplicative hash of the call number: faults land at irregular places, so a
    // reconcile cannot fail at the same step every time the way a fixed period would.
    let counters = writes.clone();
    let fail = move || {
        let n = calls.fetch_add(1, Ordering::SeqCst) as u64 + 1;
        let hashed = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        let fail = faults.is_some_and(|f| hashed.is_multiple_of(f.every as u64));
        if fail {
            counters.faults.fetch_add(1, Ordering::SeqCst);
        }
        fail
    };
    let funcs = interceptors(&writes, Arc::new(fail));
    let mut builder = ClientBuilder::new()
        .with_resource::<KnowledgeBase>()
        .with_resource::<kb_operator::reconcile::build::ServiceMonitor>()
        .with_resource::<kb_operator::reconcile::build::PrometheusRule>()
        .with_interceptor_funcs(funcs);
    if managed_fields {
        builder = builder.with_return_managed_fields();
    }
    let client = builder.build().await.unwrap();
    (client, writes)
}

/// Counts writes and injects the faults `fail` picks.
fn interceptors(
    writes: &Arc<Writes>,
    fail: Arc<dyn Fn() -> bool + Send + Sync>,
) -> interceptor::Funcs {
    let (w1, w2, w3, w4, w5) = (
        writes.clone(),
        writes.clone(),
        writes.clone(),
        writes.clone(),
        writes.clone(),
    );
    let (f1, f2, f3) = (fail.clone(), fail.clone(), fail.clone());
    interceptor::Funcs::new()
        .patch(move |_| {
            w1.bump();
            match f1() {
                true => Err(kube_fake_client::Error::Conflict(
                    "injected conflict".into(),
                )),
                false => Ok(None),
            }
        })
        .create(move |_| {
            w2.bump();
            Ok(None)
        })
        .delete(move |_| {
            w3.bump();
            match f2() {
                true => Err(kube_fake_client::Error::Internal("injected failure".into())),
                false => Ok(None),
            }
        })
        .patch_status(move |_| {
            w4.bump();
            Ok(None)
        })
        .replace(move |_| {
            w5.bump();
            Ok(None)
        })
        .get(move |_| match f3() {
            true => Err(kube_fake_client::Error::Internal("injected failure".into())),
            false => Ok(None),
        })
}

pub fn context(client: Client) -> Arc<Context> {
    Arc::new(Context {
        client,
        metrics: Arc::new(Metrics::default()),
        recorder: None,
        cleanup_timeout: Duration::from_secs(5),
        backoff: Default::default(),
    })
}

/// Creates `kb` in the fake cluster.
pub async fn create(client: &Client, kb: &KnowledgeBase) {
    let api: Api<KnowledgeBase> = Api::namespaced(client.clone(), "default");
    api.create(&Default::default(), kb).await.unwrap();
}

/// Fetches `name` and reconciles it once.
pub async fn reconcile_once(ctx: &Arc<Context>, name: &str) -> Result<Action, kb_operator::Error> {
    let api: Api<KnowledgeBase> = Api::namespaced(ctx.client.clone(), "default");
    let kb = api
        .get(name)
        .await
        .map_err(|source| kb_operator::Error::Read {
            what: name.into(),
            source: Box::new(source),
        })?;
    reconcile(Arc::new(kb), ctx.clone()).await
}

/// Reconciles until one pass succeeds without writing anything; returns the passes taken.
pub async fn converge(ctx: &Arc<Context>, writes: &Writes, name: &str) -> usize {
    for pass in 1..=40 {
        writes.take();
        let result = reconcile_once(ctx, name).await;
        let n = writes.take();
        let ok = result.is_ok();
        if ok && n == 0 {
            return pass;
        }
    }
    panic!("{name} did not converge in 40 passes");
}

pub async fn get<K>(client: &Client, name: &str) -> Option<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + DeserializeOwned,
{
    // The test's own reads may meet an injected fault too: retry those.
    let api = Api::<K>::namespaced(client.clone(), "default");
    for _ in 0..5 {
        if let Ok(found) = api.get_opt(name).await {
            return found;
        }
    }
    api.get_opt(name).await.unwrap()
}

async fn names<K>(client: &Client, kind: &str, out: &mut BTreeSet<String>)
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + DeserializeOwned,
{
    let list = Api::<K>::namespaced(client.clone(), "default")
        .list(&Default::default())
        .await
        .unwrap();
    out.extend(
        list.items
            .iter()
            .map(|o| format!("{kind}/{}", o.name_any())),
    );
}

/// Every object of the child kinds in `default`, as `Kind/name`.
pub async fn inventory(client: &Client) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    names::<ServiceAccount>(client, "ServiceAccount", &mut out).await;
    names::<ConfigMap>(client, "ConfigMap", &mut out).await;
    names::<Secret>(client, "Secret", &mut out).await;
    names::<Service>(client, "Service", &mut out).await;
    names::<StatefulSet>(client, "StatefulSet", &mut out).await;
    names::<PodDisruptionBudget>(client, "PodDisruptionBudget", &mut out).await;
    names::<HorizontalPodAutoscaler>(client, "HorizontalPodAutoscaler", &mut out).await;
    names::<NetworkPolicy>(client, "NetworkPolicy", &mut out).await;
    names::<CronJob>(client, "CronJob", &mut out).await;
    out
}

/// Number of child objects in `default`.
pub async fn inventory_count(client: &Client) -> usize {
    inventory(client).await.len()
}
