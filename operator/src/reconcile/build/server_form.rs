//! Children in the form the API server stores them, so that what the operator sends is a
//! fixed point of the server's round trip.
//!
//! The server decodes every built-in object into its Go type and encodes it again: fields
//! tagged `omitempty` disappear when empty (`env: []`, `labels: {}`, `readOnly: false`)
//! and quantities come back canonical (`1024Mi` as `1Gi`). A child sent in another form
//! never compares equal to what is stored, so every reconcile would write it again (and an
//! empty list can even bump `resourceVersion` and re-trigger the watch). [`normalize`]
//! rewrites a child into the stored form before it is hashed and applied.

use crate::quantity;
use serde_json::{Map, Value};

/// Go maps tagged `omitempty` in the kinds the operator writes (an empty one is dropped).
/// Empty *structs* are kept (`emptyDir: {}`, `podSelector: {}`): `omitempty` never drops
/// a struct, and those carry meaning.
const MAP_FIELDS: &[&str] = &[
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

/// Plain (non-pointer) Go `bool`s tagged `omitempty`: `false` is dropped.
const OMITEMPTY_BOOLS: &[&str] = &[
    "readOnly",
    "stdin",
    "stdinOnce",
    "tty",
    "hostNetwork",
    "hostPID",
    "hostIPC",
    "publishNotReadyAddresses",
];

/// Maps of quantities (container resources, claim requests).
const QUANTITY_MAPS: &[&str] = &["requests", "limits"];
/// Single quantities: `emptyDir.sizeLimit`, an autoscaling target's values.
const QUANTITY_FIELDS: &[&str] = &["sizeLimit", "averageValue"];

/// Rewrites `object` (a child as JSON) into the form the API server stores.
pub fn normalize(object: &mut Value) {
    walk(object, None);
}

fn walk(value: &mut Value, key: Option<&str>) {
    match value {
        Value::Object(map) => {
            if key.is_some_and(|k| QUANTITY_MAPS.contains(&k)) {
                canonical_quantities(map);
            }
            // `value` of an autoscaling target (`{type: Value, value: 1k}`).
            let is_target = key == Some("target") && map.contains_key("type");
            for (k, v) in map.iter_mut() {
                let quantity = QUANTITY_FIELDS.contains(&k.as_str()) || is_target && k == "value";
                match v {
                    Value::String(s) if quantity => *s = quantity::canonical(s),
                    _ => walk(v, Some(k)),
                }
            }
            map.retain(|k, v| !dropped(k, v));
        }
        Value::Array(items) => items.iter_mut().for_each(|item| walk(item, None)),
        _ => {}
    }
}

fn canonical_quantities(map: &mut Map<String, Value>) {
    for v in map.values_mut() {
        if let Value::String(s) = v {
            *s = quantity::canonical(s);
        }
    }
}

/// Whether the server drops field `key` holding `value`.
fn dropped(key: &str, value: &Value) -> bool {
    match value {
        Value::Array(items) => items.is_empty(),
        Value::Object(map) => map.is_empty() && MAP_FIELDS.contains(&key),
        Value::Bool(false) => OMITEMPTY_BOOLS.contains(&key),
        Value::Null => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn empty_lists_maps_and_omitempty_false_are_dropped_structs_kept() {
        let mut pod = json!({
            "metadata": {"labels": {}, "annotations": {"a": "b"}},
            "spec": {
                "containers": [{
                    "name": "w",
                    "env": [],
                    "volumeMounts": [{"name": "d", "mountPath": "/d", "readOnly": false},
                                     {"name": "c", "mountPath": "/c", "readOnly": true}],
                    "resources": {"requests": {"cpu": "1000m", "memory": "1024Mi"}, "limits": {}},
                    "securityContext": {"allowPrivilegeEscalation": false},
                }],
                "volumes": [{"name": "t", "emptyDir": {}}],
                "nodeSelector": {},
            },
        });
        normalize(&mut pod);
        assert_eq!(
            pod,
            json!({
                "metadata": {"annotations": {"a": "b"}},
                "spec": {
                    "containers": [{
                        "name": "w",
                        "volumeMounts": [{"name": "d", "mountPath": "/d"},
                                         {"name": "c", "mountPath": "/c", "readOnly": true}],
                        "resources": {"requests": {"cpu": "1", "memory": "1Gi"}},
                        // A pointer bool: false is stored.
                        "securityContext": {"allowPrivilegeEscalation": false},
                    }],
                    "volumes": [{"name": "t", "emptyDir": {}}],
                },
            })
        );
    }

    #[test]
    fn autoscaling_targets_and_size_limits_are_canonical() {
        let mut hpa = json!({"metrics": [
            {"type": "Pods", "pods": {"metric": {"name": "q"}, "target": {"type": "AverageValue", "averageValue": "1000"}}},
            {"type": "External", "external": {"metric": {"name": "x"}, "target": {"type": "Value", "value": "0.5"}}},
        ], "volume": {"emptyDir": {"sizeLimit": "2048Mi"}}});
        normalize(&mut hpa);
        assert_eq!(
            hpa["metrics"][0]["pods"]["target"]["averageValue"],
            json!("1k")
        );
        assert_eq!(
            hpa["metrics"][1]["external"]["target"]["value"],
            json!("500m")
        );
        assert_eq!(hpa["volume"]["emptyDir"]["sizeLimit"], json!("2Gi"));
    }
}
