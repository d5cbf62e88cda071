//! Metadata filters: `{"lang": "en", "tag": {"$in": ["a", "b"]}}`.
//!
//! Every key must match: a plain value is equality, `{"$in": [...]}` is membership.

use crate::log::Metadata;
use serde_json::Value;
use std::collections::HashSet;

/// Most values one `$in` may list: matching goes through a set, so the cost per row does
/// not grow with the list, but parsing and the cache key do.
pub const MAX_IN_VALUES: usize = 4096;
/// Most metadata keys one filter may name.
pub const MAX_KEYS: usize = 64;

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

/// The values a clause accepts, by type: a lookup per metadata value, whatever the size.
#[derive(Debug, Clone, PartialEq, Default)]
struct Accepted {
    strings: HashSet<String>,
    /// Numbers by value (`1` and `1.0` are one value): the bits of the f64, -0 as 0.
    numbers: HashSet<u64>,
    bools: [bool; 2],
}

impl Accepted {
    fn insert(&mut self, value: &Value) {
        match value {
            Value::String(s) => {
                self.strings.insert(s.clone());
            }
            Value::Number(n) => {
                if let Some(bits) = number_key(n) {
                    self.numbers.insert(bits);
                }
            }
            Value::Bool(b) => self.bools[usize::from(*b)] = true,
            _ => {}
        }
    }

    fn contains(&self, value: &Value) -> bool {
        match value {
            Value::String(s) => self.strings.contains(s.as_str()),
            Value::Number(n) => number_key(n).is_some_and(|bits| self.numbers.contains(&bits)),
            Value::Bool(b) => self.bools[usize::from(*b)],
            _ => false,
        }
    }
}

fn number_key(n: &serde_json::Number) -> Option<u64> {
    let v = n.as_f64()?;
    Some(if v == 0.0 {
        0.0f64.to_bits()
    } else {
        v.to_bits()
    })
}

#[derive(Debug, Clone, PartialEq)]
enum Clause {
    /// Equality (one value) or `$in` (several).
    OneOf(Accepted),
}

impl Filter {
    /// Parses the JSON form; the error names the offending key.
    pub fn parse(value: &Value) -> Result<Self, String> {
        let Value::Object(map) = value else {
            return Err("filter must be a JSON object of metadata keys".into());
        };
        if map.len() > MAX_KEYS {
            return Err(format!(
                "filter names {} keys; at most {MAX_KEYS} are allowed",
                map.len()
            ));
        }
        let mut clauses = Vec::with_capacity(map.len());
        for (key, cond) in map {
            let mut accepted = Accepted::default();
            match cond {
                Value::Object(op) => match (op.len(), op.get("$in")) {
                    (1, Some(Value::Array(values))) => {
                        if let Some(bad) = values.iter().find(|v| !is_scalar(v)) {
                            return Err(format!(
                                "filter on {key:?}: $in takes strings, numbers and booleans, not {bad}"
                            ));
                        }
                        if values.len() > MAX_IN_VALUES {
                            return Err(format!(
                                "filter on {key:?}: $in lists {} values; at most {MAX_IN_VALUES} are allowed",
                                values.len()
                            ));
                        }
                        values.iter().for_each(|v| accepted.insert(v));
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
                v => accepted.insert(v),
            };
            clauses.push((key.clone(), Clause::OneOf(accepted)));
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
                (Clause::OneOf(accepted), Some(have)) => {
                    any_element(have, |h| accepted.contains(h))
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
    fn large_in_lists_match_through_a_set_and_oversized_ones_are_refused() {
        let mut wanted: Vec<Value> = (0..MAX_IN_VALUES - 2)
            .map(|i| json!(format!("id-{i}")))
            .collect();
        wanted.push(json!(7));
        wanted.push(json!(false));
        let f = Filter::parse(&json!({"id": {"$in": wanted}})).unwrap();
        assert!(f.matches(&meta(json!({"id": "id-4000"}))));
        assert!(f.matches(&meta(json!({"id": 7.0}))));
        assert!(f.matches(&meta(json!({"id": [true, false]}))));
        assert!(!f.matches(&meta(json!({"id": "id-4094"}))));
        assert!(!f.matches(&meta(json!({"id": true}))));
        assert!(!f.matches(&meta(json!({"id": "7"}))));
        let too_many: Vec<usize> = (0..=MAX_IN_VALUES).collect();
        let err = Filter::parse(&json!({"id": {"$in": too_many}})).unwrap_err();
        assert!(
            err.contains("\"id\"") && err.contains(&MAX_IN_VALUES.to_string()),
            "{err}"
        );
        let keys: serde_json::Map<String, Value> = (0..=MAX_KEYS)
            .map(|i| (format!("k{i}"), json!(1)))
            .collect();
        let err = Filter::parse(&Value::Object(keys)).unwrap_err();
        assert!(err.contains(&MAX_KEYS.to_string()), "{err}");
    }

    #[test]
    fn zero_matches_negative_zero() {
        let f = Filter::parse(&json!({"v": -0.0})).unwrap();
        assert!(f.matches(&meta(json!({"v": 0}))));
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
