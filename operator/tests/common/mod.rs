//! An in-memory API server (kube-fake-client) with write counting, fault injection and
//! the behaviour of a real server that the fake lacks (`server`: server-side apply
//! removals, the Go types' round trip, StatefulSet and claim validation).
// Each test crate that includes this module uses a different subset of it.
#![allow(dead_code)]

pub mod server;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Pod, PodCondition, PodSpec, PodStatus, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kb_operator::crd::{ConditionType, KnowledgeBase, KnowledgeBaseStatus};
use kb_operator::metrics::Metrics;
use kb_operator::reconcile::{reconcile, Context};
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Api, Client, Resource, ResourceExt};
use kube_fake_client::{interceptor, ClientBuilder};
use serde::de::DeserializeOwned;
use serde_json::json;
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
    orphaning_deletes: std::sync::Mutex<Vec<String>>,
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
    /// Names deleted with `propagationPolicy: Orphan` so far.
    pub fn orphaning_deletes(&self) -> Vec<String> {
        self.orphaning_deletes.lock().unwrap().clone()
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
    let (client, writes, _) = cluster_with(faults, false).await;
    (client, writes)
}

/// [`cluster`], with the server model to adjust (StorageClasses that refuse expansion).
pub async fn cluster_with_model() -> (Client, Arc<Writes>, Arc<server::Model>) {
    cluster_with(None, false).await
}

/// [`cluster`] whose objects come back with `metadata.managedFields` (server-side apply
/// field ownership, as the in-memory API tracks it). The fake's own apply tracks
/// ownership, so the server model's apply (removals, normalisation) is off here.
pub async fn cluster_with_managed_fields() -> (Client, Arc<Writes>) {
    let (client, writes, _) = cluster_with(None, true).await;
    (client, writes)
}

async fn cluster_with(
    faults: Option<Faults>,
    managed_fields: bool,
) -> (Client, Arc<Writes>, Arc<server::Model>) {
    let model = Arc::new(server::Model::default());
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
    let server = (!managed_fields).then(|| model.clone());
    let funcs = interceptors(&writes, Arc::new(fail), server);
    let mut builder = ClientBuilder::new()
        .with_resource::<KnowledgeBase>()
        .with_resource::<kb_operator::reconcile::build::ServiceMonitor>()
        .with_resource::<kb_operator::reconcile::build::PrometheusRule>()
        .with_interceptor_funcs(funcs);
    if managed_fields {
        builder = builder.with_return_managed_fields();
    }
    let client = builder.build().await.unwrap();
    (client, writes, model)
}

/// Counts writes and injects the faults `fail` picks.
fn interceptors(
    writes: &Arc<Writes>,
    fail: Arc<dyn Fn() -> bool + Send + Sync>,
    server: Option<Arc<server::Model>>,
) -> interceptor::Funcs {
    let (w1, w2, w3, w4, w5) = (
        writes.clone(),
        writes.clone(),
        writes.clone(),
        writes.clone(),
        writes.clone(),
    );
    let (f1, f2, f3) = (fail.clone(), fail.clone(), fail.clone());
    let status_server = server.clone();
    interceptor::Funcs::new()
        .patch(move |ctx| {
            w1.bump();
            match (f1(), &server) {
                (true, _) => Err(kube_fake_client::Error::Conflict(
                    "injected conflict".into(),
                )),
                (false, Some(server)) => server.patch(&ctx),
                (false, None) => Ok(None),
            }
        })
        .create(move |_| {
            w2.bump();
            Ok(None)
        })
        .delete(move |ctx| {
            w3.bump();
            if !ctx.cascade {
                w3.orphaning_deletes
                    .lock()
                    .unwrap()
                    .push(ctx.name.to_string());
            }
            match f2() {
                true => Err(kube_fake_client::Error::Internal("injected failure".into())),
                false => Ok(None),
            }
        })
        .patch_status(move |ctx| {
            w4.bump();
            match &status_server {
                Some(server) => server.patch_status(&ctx),
                None => Ok(None),
            }
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
        rollouts: Default::default(),
        workers: Default::default(),
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

/// The StatefulSet controller's report: `ready` pods, all on the newest revision of the
/// current spec.
pub async fn set_ready_replicas(client: &Client, name: &str, ready: i32) {
    set_rollout(client, name, ready, ready, true).await;
}

/// The StatefulSet controller's report of a rollout: `updated` of `ready` pods run the
/// newest revision; `seen` says whether it has observed the current generation.
pub async fn set_rollout(client: &Client, name: &str, ready: i32, updated: i32, seen: bool) {
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    let sts: StatefulSet = get(client, name).await.expect("the StatefulSet exists");
    let generation = sts.metadata.generation.unwrap();
    let observed = if seen { generation } else { generation - 1 };
    let current = if updated >= ready { "rev-2" } else { "rev-1" };
    let status = json!({"status": {
        "replicas": ready, "readyReplicas": ready, "observedGeneration": observed,
        "updatedReplicas": updated, "currentRevision": current, "updateRevision": "rev-2",
    }});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

/// Creates the worker pod `name` of "docs" with the labels its StatefulSet selects (from
/// the status) plus `extra`, replacing one of that name.
pub async fn create_worker_pod(client: &Client, name: &str, extra: &[(&str, &str)]) {
    let kb: KnowledgeBase = get(client, "docs").await.unwrap();
    let selector = kb.status.unwrap().selector.unwrap();
    let mut labels: std::collections::BTreeMap<String, String> = selector
        .split(',')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect();
    labels.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "worker".into(),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        ..Pod::default()
    };
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let _ = api.delete(name, &Default::default()).await;
    api.create(&PostParams::default(), &pod).await.unwrap();
}

/// Status and reason of the condition `kind` of the KnowledgeBase `docs`.
pub async fn condition(client: &Client, kind: ConditionType) -> (String, String) {
    let kb: KnowledgeBase = get(client, "docs").await.unwrap();
    let status = kb.status.expect("status written");
    let c = status
        .condition(kind)
        .unwrap_or_else(|| panic!("no {kind:?} condition"));
    (c.status.clone(), c.reason.clone())
}

pub async fn status(client: &Client) -> KnowledgeBaseStatus {
    let kb: KnowledgeBase = get(client, "docs").await.unwrap();
    kb.status.unwrap()
}

pub async fn set_model(client: &Client, embedding: serde_json::Value) {
    let api: Api<KnowledgeBase> = Api::namespaced(client.clone(), "default");
    let patch = json!({"spec": {"embedding": embedding}});
    api.patch("docs", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

/// Worker pod `ordinal` of "docs" on StatefulSet revision `revision`, ready or not.
pub async fn worker_pod(client: &Client, ordinal: i32, revision: &str, ready: bool) {
    let name = format!("docs-worker-{ordinal}");
    create_worker_pod(client, &name, &[("controller-revision-hash", revision)]).await;
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let status = PodStatus {
        conditions: Some(vec![PodCondition {
            type_: "Ready".into(),
            status: if ready { "True" } else { "False" }.into(),
            ..PodCondition::default()
        }]),
        ..PodStatus::default()
    };
    let patch = json!({"status": status});
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

pub async fn events(client: &Client) -> Vec<String> {
    let list = Api::<Event>::namespaced(client.clone(), "default")
        .list(&Default::default())
        .await
        .unwrap();
    list.items.iter().filter_map(|e| e.reason.clone()).collect()
}
