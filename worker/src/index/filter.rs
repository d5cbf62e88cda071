//! Metadata filters: `{"lang": "en", "tag": {"$in": ["a", "b"]}}`.
//!
//! Every key must match: a plain value is equality, `{"$in": [...]}` is membership.

use crate::log::Metadata;
use serde_json::Value;

/// Metadata values are strings, numbers and booleans (or lists of them): anything else
/// can never match.
fn is_scalar(v: &Value) -> bool {
    matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_))
}

/// A parsed filter.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Filter {
    clauses: Vec<(String, Clause)>,
}

#[derive(Debug, Clone, PartialEq)]
enum Clause {
    Eq(Value),
    In(Vec<Value>),
}

impl Filter {
    /// Parses the JSON form; the error names the offending key.
    pub fn parse(value: &Value) -> Result<Self, String> {
        let Value::Object(map) = value else {
            return Err("filter must be a JSON object of metadata keys".into());
        };
        let mut clauses = Vec::with_capacity(map.len());
        for (key, cond) in map {
            let clause = match cond {
                Value::Object(op) => match (op.len(), op.get("$in")) {
                    (1, Some(Value::Array(values))) => {
                        if let Some(bad) = values.iter().find(|v| !is_scalar(v)) {
                            return Err(format!(
                                "filter on {key:?}: $in takes strings, numbers and booleans, not {bad}"
                            ));
                        }
                        Clause::In(values.clone())
                    }
                    _ => {
                        return Err(format!(
                            "filter on {key:?}: only a value or {{\"$in\": [values]}} is supported"
                        ))
                    }
                },
                Value::Array(_) => {
                    return Err(format!(
                        "filter on {key:?}: use {{\"$in\": [...]}} for lists"
                    ))
                }
                Value::Null => {
                    return Err(format!(
                        "filter on {key:?}: null never matches; give a string, number or boolean"
                    ))
                }
                v => Clause::Eq(v.clone()),
            };
            clauses.push((key.clone(), clause));
        }
        Ok(Self { clauses })
    }

    /// True when the filter has no clause.
    pub fn is_empty(&self) -> bool {
        self.clauses.is_empty()
    }

    /// Whether `metadata` satisfies every clause. A list-valued metadata field matches
    /// element-wise: `{"tags": "a"}` and `{"tags": {"$in": ["a", "z"]}}` both match
    /// `"tags": ["a", "b"]`.
    pub fn matches(&self, metadata: &Metadata) -> bool {
        self.clauses
            .iter()
            .all(|(key, clause)| match (clause, metadata.get(key)) {
                (_, None) => false,
                (Clause::Eq(want), Some(have)) => any_element(have, |h| values_equal(want, h)),
                (Clause::In(wants), Some(have)) => {
                    any_element(have, |h| wants.iter().any(|w| values_equal(w, h)))
                }
            })
    }
}

/// `test` on the value, or on each element when it is a list.
fn any_element(have: &Value, test: impl Fn(&Value) -> bool) -> bool {
    match have {
        Value::Array(items) => items.iter().any(test),
        one => test(one),
    }
}

/// Numbers compare by value so `1` matches `1.0`.
fn values_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(v: Value) -> Metadata {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn equality_and_in_clauses_must_all_match() {
        let f = Filter::parse(&json!({"lang": "en", "tag": {"$in": ["a", "b"]}})).unwrap();
        assert!(f.matches(&meta(json!({"lang": "en", "tag": "b", "x": 1}))));
        assert!(!f.matches(&meta(json!({"lang": "en", "tag": "c"}))));
        assert!(!f.matches(&meta(json!({"lang": "de", "tag": "a"}))));
        assert!(!f.matches(&meta(json!({"tag": "a"}))));
    }

    #[test]
    fn list_metadata_matches_element_wise() {
        let tagged = meta(json!({"tags": ["search", "platform"], "v": [1, 2]}));
        assert!(Filter::parse(&json!({"tags": "platform"}))
            .unwrap()
            .matches(&tagged));
        assert!(Filter::parse(&json!({"tags": {"$in": ["x", "search"]}}))
            .unwrap()
            .matches(&tagged));
        assert!(Filter::parse(&json!({"v": 2.0})).unwrap().matches(&tagged));
        assert!(!Filter::parse(&json!({"tags": "ml"}))
            .unwrap()
            .matches(&tagged));
        assert!(!Filter::parse(&json!({"tags": {"$in": ["ml"]}}))
            .unwrap()
            .matches(&tagged));
    }

    #[test]
    fn numbers_match_across_integer_and_float() {
        let f = Filter::parse(&json!({"v": 1})).unwrap();
        assert!(f.matches(&meta(json!({"v": 1.0}))));
    }

    #[test]
    fn unsupported_operators_are_rejected_with_the_key() {
        let err = Filter::parse(&json!({"year": {"$gt": 3}})).unwrap_err();
        assert!(err.contains("year"), "{err}");
        assert!(Filter::parse(&json!([1])).is_err());
    }

    #[test]
    fn values_that_can_never_match_are_rejected() {
        let err = Filter::parse(&json!({"tag": {"$in": ["a", {}]}})).unwrap_err();
        assert!(err.contains("tag") && err.contains("{}"), "{err}");
        assert!(Filter::parse(&json!({"tag": {"$in": [[1]]}})).is_err());
        assert!(Filter::parse(&json!({"tag": null})).is_err());
        assert!(Filter::parse(&json!({"tag": {"$in": ["a", 1, true]}})).is_ok());
    }
}
