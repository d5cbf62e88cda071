//! Matching a parsed [`Filter`] against one row's metadata.

use super::{datetime, Accepted, Bound, Cond, Filter, Node, Test};
use crate::log::Metadata;
use serde_json::Value;

impl Filter {
    /// Whether `metadata` satisfies every entry (see the module documentation for the
    /// semantics). A list-valued metadata field matches element-wise: `{"tags": "a"}` and
    /// `{"tags": {"$in": ["a", "z"]}}` both match `"tags": ["a", "b"]`.
    pub fn matches(&self, metadata: &Metadata) -> bool {
        self.clauses.iter().all(|node| node.matches(metadata))
    }
}

impl Node {
    fn matches(&self, metadata: &Metadata) -> bool {
        match self {
            Node::Field(key, cond) => cond.matches(metadata.get(key)),
            Node::And(nodes) => nodes.iter().all(|n| n.matches(metadata)),
            Node::Or(nodes) => nodes.iter().any(|n| n.matches(metadata)),
            Node::Not(node) => !node.matches(metadata),
        }
    }
}

impl Cond {
    fn matches(&self, have: Option<&Value>) -> bool {
        match self {
            Cond::Exists(wanted) => have.is_some() == *wanted,
            Cond::Any(test) => have.is_some_and(|have| match have {
                Value::Array(items) => items.iter().any(|item| test.passes(item)),
                one => test.passes(one),
            }),
            Cond::Not(cond) => !cond.matches(have),
            Cond::All(conds) => conds.iter().all(|c| c.matches(have)),
        }
    }
}

impl Test {
    /// On one scalar (a list's element, or the value); anything else fails.
    fn passes(&self, value: &Value) -> bool {
        match self {
            Test::OneOf(accepted) => accepted.contains(value),
            Test::Order { bound, accept } => {
                let ordering = match (bound, value) {
                    (Bound::Number(b), Value::Number(n)) => {
                        n.as_f64().and_then(|v| v.partial_cmp(b))
                    }
                    (Bound::Text(b), Value::String(s)) => Some(s.as_str().cmp(b.as_str())),
                    (Bound::Instant(b), Value::String(s)) => datetime::parse(s).map(|t| t.cmp(b)),
                    _ => None,
                };
                ordering.is_some_and(|o| accept.contains(&o))
            }
        }
    }
}

impl Accepted {
    fn contains(&self, value: &Value) -> bool {
        match value {
            Value::String(s) => {
                self.strings.contains(s.as_str())
                    || (!self.instants.is_empty()
                        && datetime::parse(s).is_some_and(|t| self.instants.contains(&t)))
            }
            Value::Number(n) => {
                super::number_key(n).is_some_and(|bits| self.numbers.contains(&bits))
            }
            Value::Bool(b) => self.bools[usize::from(*b)],
            _ => false,
        }
    }
}
