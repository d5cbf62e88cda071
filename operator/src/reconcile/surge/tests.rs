use super::*;
use crate::crd::{KnowledgeBase, ModelRollout, ModelRolloutPolicy};
use crate::reconcile::build::fixtures::{inputs, kb, managed_redis};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::json;

/// Two workers with managed Redis whose data is of model `stored`.
fn two(stored: &str) -> (KnowledgeBase, KnowledgeBaseStatus) {
    let mut kb = kb("docs");
    kb.spec.replicas = 2;
    kb.spec.redis = Some(managed_redis());
    let status = KnowledgeBaseStatus {
        model: Some(stored.to_string()),
        ..KnowledgeBaseStatus::default()
    };
    (kb, status)
}

fn change(kb: &KnowledgeBase, phase: &str) -> ModelRollout {
    ModelRollout {
        from: "image:/opt/kb/model".into(),
        to: kb.spec.embedding.model_ref(),
        phase: phase.into(),
        started: Time(jiff::Timestamp::UNIX_EPOCH),
        surge_replicas: 1,
        surge_gpus: 0,
        message: None,
        updated_replicas: 0,
        updated_ready_replicas: 0,
        documents_done: None,
        documents_total: None,
        estimated_finish: None,
        progress_time: None,
    }
}

#[test]
fn a_model_change_adds_workers_of_the_new_model_and_holds_the_current_ones_until_one_serves() {
    let (kb, status) = two("image:/opt/kb/model");
    assert_eq!(shape(&kb.spec, Some(&status), None), None, "no change");
    let (mut kb, mut status) = two("pvc:models/e5");
    assert_eq!(
        shape(&kb.spec, Some(&status), None),
        Some(Shape {
            replicas: 3,
            partition: Some(2),
            added: 1,
            base: None,
        })
    );
    // An added worker serves the new model: the current ones are replaced.
    status.model_rollout = Some(change(&kb, "Reindexing"));
    assert_eq!(
        shape(&kb.spec, Some(&status), None).unwrap().partition,
        Some(2)
    );
    status.model_rollout = Some(change(&kb, REPLACING));
    assert_eq!(
        shape(&kb.spec, Some(&status), None),
        Some(Shape {
            replicas: 3,
            partition: None,
            added: 1,
            base: None,
        })
    );
    // Two added workers asked for.
    kb.spec.embedding.rollout = Some(ModelRolloutPolicy { max_surge: Some(2) });
    assert_eq!(shape(&kb.spec, Some(&status), None).unwrap().replicas, 4);
    // maxSurge 0: in place, the StatefulSet as the spec says.
    kb.spec.embedding.rollout = Some(ModelRolloutPolicy { max_surge: Some(0) });
    assert_eq!(shape(&kb.spec, Some(&status), None), None);
}

#[test]
fn after_the_change_or_a_revert_the_added_pods_stay_until_they_run_the_current_template_ready() {
    let (kb, status) = two("image:/opt/kb/model");
    let unsettled = Live {
        replicas: 3,
        surged: true,
        base: None,
        added_settled: false,
        added_pods: true,
    };
    assert_eq!(
        shape(&kb.spec, Some(&status), Some(&unsettled)),
        Some(Shape {
            replicas: 3,
            partition: None,
            added: 1,
            base: None,
        })
    );
    // Settled: back to the spec's replicas, still marked until the added pod is gone
    // (its claim goes with it).
    let settled = Live {
        added_settled: true,
        ..unsettled.clone()
    };
    let shrink = Some(Shape {
        replicas: 2,
        partition: None,
        added: 0,
        base: None,
    });
    assert_eq!(shape(&kb.spec, Some(&status), Some(&settled)), shrink);
    let terminating = Live {
        replicas: 2,
        ..settled.clone()
    };
    assert_eq!(shape(&kb.spec, Some(&status), Some(&terminating)), shrink);
    let gone = Live {
        added_pods: false,
        ..terminating
    };
    assert_eq!(shape(&kb.spec, Some(&status), Some(&gone)), None);
    // A StatefulSet the operator did not surge (the user scales down during a rollout of
    // the spec) takes the spec's replicas at once.
    let plain = Live {
        surged: false,
        ..unsettled
    };
    assert_eq!(shape(&kb.spec, Some(&status), Some(&plain)), None);
}

fn pod(name: &str, revision: &str, status: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"controller-revision-hash": revision}},
        "status": status,
    }))
    .unwrap()
}

fn ready() -> serde_json::Value {
    json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]})
}

fn statefulset(replicas: i32, update_revision: &str) -> StatefulSet {
    serde_json::from_value(json!({
        "metadata": {"name": "docs-worker", "generation": 4,
                     "annotations": {SURGE_ANNOTATION: "1"}},
        "spec": {"replicas": replicas, "selector": {}, "serviceName": "x", "template": {}},
        "status": {"replicas": replicas, "observedGeneration": 4,
                   "updateRevision": update_revision, "currentRevision": "rev-a"},
    }))
    .unwrap()
}

#[test]
fn an_added_pod_settles_when_it_runs_the_newest_revision_ready_or_no_node_fits_it() {
    let sts = statefulset(3, "rev-a");
    let current = [pod("docs-worker-0", "rev-a", ready())];
    // The added pod still runs the abandoned model's revision.
    let mut pods = vec![current[0].clone(), pod("docs-worker-2", "rev-b", ready())];
    let seen = live(&sts, &pods, 2);
    assert_eq!(
        (seen.replicas, seen.surged, seen.added_settled),
        (3, true, false)
    );
    // Restarted on the newest revision, not ready yet (it cancels its job first).
    let starting =
        json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}]});
    pods[1] = pod("docs-worker-2", "rev-a", starting);
    assert!(!live(&sts, &pods, 2).added_settled);
    pods[1] = pod("docs-worker-2", "rev-a", ready());
    assert!(live(&sts, &pods, 2).added_settled);
    // Gone (being created again): not settled.
    assert!(!live(&sts, &current, 2).added_settled);
    // No node fits it: it never ran and holds nothing.
    let refused = json!({"phase": "Pending", "conditions": [{"type": "PodScheduled",
        "status": "False", "reason": "Unschedulable", "message": "0/3 nodes: Insufficient nvidia.com/gpu"}]});
    pods[1] = pod("docs-worker-2", "rev-b", refused);
    assert!(live(&sts, &pods, 2).added_settled);
    assert!(seen.added_pods);
    assert!(!live(&sts, &current, 2).added_pods);
    // The controller has not seen the last spec yet.
    let mut stale = sts.clone();
    stale.metadata.generation = Some(5);
    pods[1] = pod("docs-worker-2", "rev-a", ready());
    assert!(!live(&stale, &pods, 2).added_settled);
}

/// The plan's worker StatefulSet and PodDisruptionBudget.
fn planned(plan: &Plan) -> (&StatefulSet, &PodDisruptionBudget) {
    let Some(Child::StatefulSet(sts)) = plan.get(ChildKind::StatefulSet, "docs-worker") else {
        panic!("no worker StatefulSet planned");
    };
    let Some(Child::PodDisruptionBudget(pdb)) =
        plan.get(ChildKind::PodDisruptionBudget, "docs-worker")
    else {
        panic!("no worker PodDisruptionBudget planned");
    };
    (sts, pdb)
}

#[test]
fn the_shape_goes_into_the_planned_statefulset() {
    let (kb, _) = two("x");
    let mut plan = crate::reconcile::build::plan(&kb, &inputs(&kb));
    let shape = Shape {
        replicas: 3,
        partition: Some(2),
        added: 1,
        base: None,
    };
    reshape(&mut plan, "docs-worker", Some(&shape));
    let (sts, pdb) = planned(&plan);
    let spec = sts.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(3));
    let strategy = spec.update_strategy.as_ref().unwrap();
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    assert_eq!(strategy.rolling_update.as_ref().unwrap().partition, Some(2));
    assert_eq!(sts.annotations().get(SURGE_ANNOTATION).unwrap(), "1");
    let retention = |sts: &StatefulSet| {
        let policy = sts.spec.as_ref().unwrap();
        let policy = policy.persistent_volume_claim_retention_policy.as_ref();
        policy.unwrap().when_scaled.clone().unwrap()
    };
    assert_eq!(
        retention(sts),
        "Delete",
        "the added pods' claims go with them"
    );
    assert_eq!(
        pdb.spec.as_ref().unwrap().max_unavailable,
        Some(IntOrString::Int(2)),
        "the added worker, not ready while it re-indexes, does not block node drains"
    );
    let mut plain = crate::reconcile::build::plan(&kb, &inputs(&kb));
    reshape(&mut plain, "docs-worker", None);
    let (sts, pdb) = planned(&plain);
    assert_eq!(sts.spec.as_ref().unwrap().replicas, Some(2));
    assert!(!sts.annotations().contains_key(SURGE_ANNOTATION));
    assert_eq!(retention(sts), "Retain");
    assert_eq!(
        pdb.spec.as_ref().unwrap().max_unavailable,
        Some(IntOrString::Int(1))
    );
}

/// Two workers with managed Redis and autoscaling (2 to 3), whose data is of `stored`.
fn autoscaled(stored: &str) -> (KnowledgeBase, KnowledgeBaseStatus) {
    let (mut kb, status) = two(stored);
    kb.spec.autoscaling =
        Some(serde_json::from_value(json!({"minReplicas": 2, "maxReplicas": 3})).unwrap());
    (kb, status)
}

#[test]
fn an_autoscaled_change_holds_the_count_it_started_from_and_adds_above_it() {
    let (kb, status) = autoscaled("image:/opt/kb/model");
    let three = Live {
        replicas: 3,
        ..Live::default()
    };
    assert_eq!(
        shape(&kb.spec, Some(&status), Some(&three)),
        None,
        "no change"
    );
    let (kb, mut status) = autoscaled("pvc:models/e5");
    assert_eq!(shape(&kb.spec, Some(&status), None), None, "no workers yet");
    // The autoscaler runs three: those three keep the old model, a fourth is added.
    let holding = Some(Shape {
        replicas: 4,
        partition: Some(3),
        added: 1,
        base: Some(3),
    });
    assert_eq!(shape(&kb.spec, Some(&status), Some(&three)), holding);
    // Later passes read the count it started from, whatever the autoscaler runs now.
    let surged = Live {
        replicas: 5,
        surged: true,
        base: Some(3),
        ..Live::default()
    };
    assert_eq!(shape(&kb.spec, Some(&status), Some(&surged)), holding);
    status.model_rollout = Some(change(&kb, REPLACING));
    assert_eq!(
        shape(&kb.spec, Some(&status), Some(&surged))
            .unwrap()
            .partition,
        None
    );
    // The change is over: the floor holds until every added pod runs the new template
    // ready, then the autoscaler scales in as it likes (no shrink of the operator's).
    let (kb, status) = autoscaled(&kb.spec.embedding.model_ref());
    assert_eq!(
        shape(&kb.spec, Some(&status), Some(&surged)),
        Some(Shape {
            replicas: 5,
            partition: None,
            added: 2,
            base: Some(3),
        })
    );
    let settled = Live {
        added_settled: true,
        added_pods: true,
        ..surged
    };
    assert_eq!(shape(&kb.spec, Some(&status), Some(&settled)), None);
}

#[test]
fn an_autoscaled_shape_raises_the_autoscalers_floor_and_leaves_the_count_to_it() {
    let (kb, _) = autoscaled("x");
    let mut plan = crate::reconcile::build::plan(&kb, &inputs(&kb));
    let shape = Shape {
        replicas: 4,
        partition: Some(3),
        added: 1,
        base: Some(3),
    };
    reshape(&mut plan, "docs-worker", Some(&shape));
    let (sts, pdb) = planned(&plan);
    let spec = sts.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, None, "the autoscaler owns the count");
    let strategy = spec.update_strategy.as_ref().unwrap();
    assert_eq!(strategy.rolling_update.as_ref().unwrap().partition, Some(3));
    assert_eq!(sts.annotations().get(SURGE_ANNOTATION).unwrap(), "1");
    assert_eq!(sts.annotations().get(SURGE_BASE_ANNOTATION).unwrap(), "3");
    let policy = spec.persistent_volume_claim_retention_policy.as_ref();
    assert_eq!(policy.unwrap().when_scaled.as_deref(), Some("Retain"));
    assert_eq!(
        pdb.spec.as_ref().unwrap().max_unavailable,
        Some(IntOrString::Int(2))
    );
    let Some(Child::HorizontalPodAutoscaler(hpa)) =
        plan.get(ChildKind::HorizontalPodAutoscaler, "docs-worker")
    else {
        panic!("no HorizontalPodAutoscaler planned");
    };
    let hpa = hpa.spec.as_ref().unwrap();
    assert_eq!(
        (hpa.min_replicas, hpa.max_replicas),
        (Some(4), 4),
        "floor and ceiling raised to the held workers plus the added one"
    );
}
