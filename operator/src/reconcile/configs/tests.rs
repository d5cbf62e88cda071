use super::*;
use crate::reconcile::build::fixtures::{inputs, kb};
use crate::reconcile::build::{pinned_key, plan, WANTED_MODEL_KEY};
use serde_json::json;

/// The planned worker StatefulSet and ConfigMap of "docs" with `model_path`.
fn planned(model_path: &str) -> (Plan, StatefulSet) {
    let mut kb = kb("docs");
    kb.spec.embedding.model_path = model_path.to_string();
    let plan = plan(&kb, &inputs(&kb));
    let Some(Child::StatefulSet(sts)) = plan.get(ChildKind::StatefulSet, "docs-worker") else {
        panic!("no worker StatefulSet planned");
    };
    let sts = (**sts).clone();
    (plan, sts)
}

fn data(plan: &Plan) -> BTreeMap<String, String> {
    let Some(Child::ConfigMap(cm)) = plan.get(ChildKind::ConfigMap, "docs-worker") else {
        panic!("no worker ConfigMap planned");
    };
    cm.data.clone().unwrap()
}

/// `sts` as its controller reports it: `current`/`update` revisions, `updated` of `replicas`.
fn reported(mut sts: StatefulSet, current: &str, update: &str, updated: i32) -> StatefulSet {
    sts.metadata.generation = Some(3);
    sts.status = Some(
        serde_json::from_value(json!({"replicas": 1, "observedGeneration": 3,
            "currentRevision": current, "updateRevision": update, "updatedReplicas": updated}))
        .unwrap(),
    );
    sts
}

/// The key the pod template mounts as config.yaml.
fn mounted(sts: &StatefulSet) -> String {
    let pod = sts.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let volume = pod.volumes.iter().flatten().find(|v| v.name == "config");
    let items = volume.unwrap().config_map.as_ref().unwrap().items.clone();
    let item = items.unwrap().into_iter().next().unwrap();
    assert_eq!(item.path, "config.yaml");
    item.key
}

#[test]
fn each_template_mounts_the_configuration_of_its_own_hash() {
    let (old_plan, old) = planned("/opt/kb/model");
    let (new_plan, new) = planned("/opt/kb/other");
    let (old_key, new_key) = (mounted(&old), mounted(&new));
    assert_ne!(old_key, new_key);
    let hash = |sts: &StatefulSet| {
        sts.spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()[CONFIG_HASH_ANNOTATION]
            .clone()
    };
    assert_eq!(old_key, pinned_key(&hash(&old)));
    let old_data = data(&old_plan);
    assert!(old_data[&old_key].contains("/opt/kb/model"));
    assert_eq!(old_data[&old_key], old_data["config.yaml"]);
    assert_eq!(old_data[WANTED_MODEL_KEY], "image:/opt/kb/model");
    assert!(!data(&new_plan).contains_key(&old_key));
}

#[test]
fn mid_rollout_the_old_revisions_configuration_is_applied_again() {
    let (old_plan, old) = planned("/opt/kb/model");
    let (mut new_plan, _) = planned("/opt/kb/other");
    let old_key = mounted(&old);
    let Some(Child::ConfigMap(live)) = old_plan.get(ChildKind::ConfigMap, "docs-worker") else {
        panic!("no ConfigMap");
    };
    // The live StatefulSet still on the old template: its key stays.
    let settled = reported(old.clone(), "rev-1", "rev-1", 1);
    keep(&mut new_plan, "docs-worker", Some(live), Some(&settled));
    let kept = data(&new_plan);
    assert_eq!(kept[&old_key], data(&old_plan)[&old_key]);
    assert!(kept["config.yaml"].contains("/opt/kb/other"));
    assert_eq!(kept.len(), 4, "{:?}", kept.keys());

    // Mid-rollout (the live template is the new one, old pods remain): every key stays.
    let (_, new) = planned("/opt/kb/other");
    let Some(Child::ConfigMap(live)) = new_plan.get(ChildKind::ConfigMap, "docs-worker") else {
        panic!("no ConfigMap");
    };
    let live = live.clone();
    let rolling = reported(new.clone(), "rev-1", "rev-2", 0);
    let (mut again, _) = planned("/opt/kb/other");
    keep(&mut again, "docs-worker", Some(&live), Some(&rolling));
    assert!(data(&again).contains_key(&old_key));
    // No live StatefulSet (created again with new claim templates): every key stays.
    let (mut again, _) = planned("/opt/kb/other");
    keep(&mut again, "docs-worker", Some(&live), None);
    assert!(data(&again).contains_key(&old_key));
    // Its controller has not seen the spec yet: every key stays.
    let mut unseen = reported(new.clone(), "rev-2", "rev-2", 1);
    unseen.metadata.generation = Some(4);
    let (mut again, _) = planned("/opt/kb/other");
    keep(&mut again, "docs-worker", Some(&live), Some(&unseen));
    assert!(data(&again).contains_key(&old_key));

    // Converged on the new template: the old key goes.
    let done = reported(new, "rev-2", "rev-2", 1);
    let (mut again, _) = planned("/opt/kb/other");
    keep(&mut again, "docs-worker", Some(&live), Some(&done));
    assert!(!data(&again).contains_key(&old_key));
    assert_eq!(data(&again).len(), 3);
}
