//! What a real API server does to built-in objects that kube-fake-client's merge does not:
//!
//! - **Round trip through the Go types**: fields tagged `omitempty` vanish when empty
//!   (empty lists, empty maps, `false` in plain bools such as `readOnly`), quantities are
//!   stored canonical (`1024Mi` -> `1Gi`, `1000m` -> `1`, `1000` -> `1k`).
//! - **Server-side apply removals**: a field the manager applied before and no longer
//!   sends is removed (the fake merges, so it would stay).
//! - **No-op applies are no writes**: an apply that changes nothing keeps the
//!   `resourceVersion` (so a watch sees nothing).
//! - **Validation**: a StatefulSet's spec may change only in `replicas`, `template`,
//!   `updateStrategy`, `persistentVolumeClaimRetentionPolicy`, `minReadySeconds` and
//!   `ordinals`; a claim's storage request may grow (when its StorageClass allows
//!   expansion) but never shrink.
//!
//! The model is written from the Go struct tags, independently of the operator's own
//! `server_form`, so a child the operator sends in another form shows up as a write on
//! every pass.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::PostParams;
use kube_fake_client::interceptor::{PatchContext, PatchStatusContext};
use kube_fake_client::{Error, PatchType};
use serde_json::{Map, Value};
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

/// Server behaviour the tests switch on or inspect.
#[derive(Default)]
pub struct Model {
    /// The last body each field manager applied, per `kind/namespace/name`.
    applied: Mutex<HashMap<String, Value>>,
    /// StorageClasses without `allowVolumeExpansion`.
    fixed_size_classes: Mutex<BTreeSet<String>>,
}

impl Model {
    /// Claims of `class` refuse to grow, as with a StorageClass without
    /// `allowVolumeExpansion: true`.
    pub fn refuse_expansion(&self, class: &str) {
        self.fixed_size_classes.lock().unwrap().insert(class.into());
    }

    /// Handles a patch like the API server would; `Ok(None)` leaves it to the fake.
    pub fn patch(&self, ctx: &PatchContext) -> kube_fake_client::Result<Option<Value>> {
        let kind = ctx.patch["kind"].as_str().unwrap_or_default().to_string();
        match ctx.patch_type {
            PatchType::ApplyPatch => self.apply(ctx, &kind),
            PatchType::MergePatch | PatchType::StrategicMergePatch => {
                self.check_claim_patch(ctx)?;
                Ok(None)
            }
            PatchType::JsonPatch => Ok(None),
        }
    }

    fn apply(&self, ctx: &PatchContext, kind: &str) -> kube_fake_client::Result<Option<Value>> {
        let (client, ns, name) = (ctx.client, ctx.namespace, ctx.name);
        let manager = ctx.params.field_manager.clone().unwrap_or_default();
        let key = format!("{kind}/{ns}/{name}/{manager}");
        let mut body = ctx.patch.clone();
        stored_form(&mut body, None);
        let previous = self.applied.lock().unwrap().get(&key).cloned();
        macro_rules! typed {
            ($k:ty) => {{
                let stored = match client.get::<$k>(ns, name) {
                    Ok(existing) => {
                        let existing = serde_json::to_value(existing)?;
                        let mut merged = existing.clone();
                        if let Some(previous) = &previous {
                            remove_unsent(&mut merged, previous, &body);
                        }
                        merge(&mut merged, &body);
                        stored_form(&mut merged, None);
                        if kind == "StatefulSet" {
                            check_statefulset_update(&existing, &merged)?;
                        }
                        if merged == existing {
                            existing
                        } else {
                            let object: $k = serde_json::from_value(merged)?;
                            serde_json::to_value(client.update(
                                ns,
                                &object,
                                &PostParams::default(),
                            )?)?
                        }
                    }
                    Err(Error::NotFound { .. }) => {
                        let object: $k = serde_json::from_value(body.clone())?;
                        serde_json::to_value(client.create(ns, &object, &PostParams::default())?)?
                    }
                    Err(other) => return Err(other),
                };
                self.applied.lock().unwrap().insert(key, body);
                Ok(Some(stored))
            }};
        }
        match kind {
            "ServiceAccount" => typed!(ServiceAccount),
            "ConfigMap" => typed!(ConfigMap),
            "Secret" => typed!(Secret),
            "Service" => typed!(Service),
            "StatefulSet" => typed!(StatefulSet),
            "PodDisruptionBudget" => typed!(PodDisruptionBudget),
            "HorizontalPodAutoscaler" => typed!(HorizontalPodAutoscaler),
            "NetworkPolicy" => typed!(NetworkPolicy),
            "CronJob" => typed!(CronJob),
            "PersistentVolumeClaim" => typed!(PersistentVolumeClaim),
            // Custom resources are stored as sent (after pruning, which the fake skips).
            _ => Ok(None),
        }
    }

    /// Server-side apply of a KnowledgeBase's status: fields the manager applied before
    /// and no longer sends are removed (the fake merges status too).
    pub fn patch_status(
        &self,
        ctx: &PatchStatusContext,
    ) -> kube_fake_client::Result<Option<Value>> {
        if ctx.patch_type != PatchType::ApplyPatch
            || ctx.patch["kind"].as_str() != Some("KnowledgeBase")
        {
            return Ok(None);
        }
        let (client, ns, name) = (ctx.client, ctx.namespace, ctx.name);
        let manager = ctx.params.field_manager.clone().unwrap_or_default();
        let key = format!("KnowledgeBase/{ns}/{name}/status/{manager}");
        let body = ctx.patch["status"].clone();
        let previous = self.applied.lock().unwrap().get(&key).cloned();
        let existing = client.get::<StoredKb>(ns, name)?;
        let mut object = serde_json::to_value(existing)?;
        let status = object
            .as_object_mut()
            .expect("an object")
            .entry("status")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(previous) = &previous {
            remove_unsent(status, previous, &body);
        }
        merge(status, &body);
        let object: StoredKb = serde_json::from_value(object)?;
        let stored = client.update_status(ns, &object, &PostParams::default())?;
        self.applied.lock().unwrap().insert(key, body);
        Ok(Some(serde_json::to_value(stored)?))
    }

    /// A claim's storage request: never lower, higher only where the class allows it.
    fn check_claim_patch(&self, ctx: &PatchContext) -> kube_fake_client::Result<()> {
        let requested = &ctx.patch["spec"]["resources"]["requests"]["storage"];
        let Some(requested) = requested.as_str() else {
            return Ok(());
        };
        let Ok(claim) = ctx
            .client
            .get::<PersistentVolumeClaim>(ctx.namespace, ctx.name)
        else {
            return Ok(());
        };
        let spec = claim.spec.unwrap_or_default();
        let current = spec
            .resources
            .and_then(|r| r.requests)
            .and_then(|r| r.get("storage").cloned())
            .map(|q| q.0)
            .unwrap_or_default();
        let parse = |s: &str| kb_operator::quantity::Quantity::parse(s);
        let (Some(new), Some(old)) = (parse(requested), parse(&current)) else {
            return Ok(());
        };
        if new < old {
            return Err(Error::InvalidRequest(format!(
                "PersistentVolumeClaim \"{}\" is invalid: spec.resources.requests.storage: \
                 Forbidden: field can not be less than status.capacity",
                ctx.name
            )));
        }
        let class = spec.storage_class_name.unwrap_or_default();
        if new > old && self.fixed_size_classes.lock().unwrap().contains(&class) {
            return Err(Error::InvalidRequest(format!(
                "persistentvolumeclaims \"{}\" is forbidden: only dynamically provisioned pvc \
                 can be resized and the storageclass that provisions the pvc must support resize",
                ctx.name
            )));
        }
        Ok(())
    }
}

/// The API server's refusal of a StatefulSet update outside the mutable fields.
fn check_statefulset_update(old: &Value, new: &Value) -> kube_fake_client::Result<()> {
    const MUTABLE: &[&str] = &[
        "replicas",
        "template",
        "updateStrategy",
        "persistentVolumeClaimRetentionPolicy",
        "minReadySeconds",
        "ordinals",
    ];
    let frozen = |v: &Value| -> Map<String, Value> {
        v["spec"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| !MUTABLE.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    if frozen(old) != frozen(new) {
        return Err(Error::InvalidRequest(
            "StatefulSet.apps is invalid: spec: Forbidden: updates to statefulset spec for \
             fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', \
             'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden"
                .into(),
        ));
    }
    Ok(())
}

/// RFC 7386 merge of `patch` into `target`.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// Removes from `target` what `previous` applied and `current` no longer sends (lists
/// are atomic here: sent again, they replace the old one whole).
fn remove_unsent(target: &mut Value, previous: &Value, current: &Value) {
    let (Value::Object(t), Value::Object(prev)) = (target, previous) else {
        return;
    };
    for (k, old) in prev {
        match current.get(k) {
            None => {
                t.remove(k);
            }
            Some(new) if old.is_object() && new.is_object() => {
                if let Some(child) = t.get_mut(k) {
                    remove_unsent(child, old, new);
                }
            }
            Some(_) => {}
        }
    }
}

/// Go's `omitempty` round trip and quantity canonicalisation, key by key, as the types
/// of apps/v1, core/v1, autoscaling/v2, batch/v1, networking/v1 and policy/v1 declare them.
fn stored_form(value: &mut Value, key: Option<&str>) {
    // map[string]string / map[ResourceName]Quantity with omitempty.
    const MAPS: &[&str] = &[
        "labels",
        "annotations",
        "matchLabels",
        "nodeSelector",
        "data",
        "binaryData",
        "stringData",
        "requests",
        "limits",
    ];
    // bool (not *bool) with omitempty.
    const PLAIN_BOOLS: &[&str] = &[
        "readOnly",
        "stdin",
        "stdinOnce",
        "tty",
        "hostNetwork",
        "hostPID",
        "hostIPC",
        "publishNotReadyAddresses",
    ];
    match value {
        Value::Object(map) => {
            let quantities = matches!(key, Some("requests" | "limits" | "capacity"));
            let target = key == Some("target");
            for (k, v) in map.iter_mut() {
                let is_quantity = quantities
                    || k == "sizeLimit"
                    || (target && (k == "value" || k == "averageValue"));
                match v {
                    Value::String(s) if is_quantity => {
                        *s = kb_operator::quantity::canonical(s);
                    }
                    _ => stored_form(v, Some(k)),
                }
            }
            map.retain(|k, v| match v {
                Value::Null => false,
                Value::Array(a) => !a.is_empty(),
                Value::Object(o) => !(o.is_empty() && MAPS.contains(&k.as_str())),
                Value::Bool(false) => !PLAIN_BOOLS.contains(&k.as_str()),
                _ => true,
            });
        }
        Value::Array(items) => items.iter_mut().for_each(|v| stored_form(v, None)),
        _ => {}
    }
}

/// `object` as the server would store it (for tests that check fixed points).
pub fn as_stored(object: &Value) -> Value {
    let mut stored = object.clone();
    stored_form(&mut stored, None);
    stored
}

/// A KnowledgeBase as stored, for the fake's typed calls (which need `Default`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct StoredKb {
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    spec: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<Value>,
}

impl Default for StoredKb {
    fn default() -> Self {
        Self {
            api_version: "knowledge.dev/v1alpha1".into(),
            kind: "KnowledgeBase".into(),
            metadata: Default::default(),
            spec: None,
            status: None,
        }
    }
}

impl kube::Resource for StoredKb {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;
    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        "KnowledgeBase".into()
    }
    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        "knowledge.dev".into()
    }
    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        "v1alpha1".into()
    }
    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        "knowledgebases".into()
    }
    fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        &mut self.metadata
    }
}
