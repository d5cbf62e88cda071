//! Metadata filters: `{"lang": "en", "year": {"$gte": 2020, "$lt": 2024}}`.
//!
//! A filter object's entries must all match. An entry is either a metadata key with its
//! condition or a logical operator: `$and`/`$or` (a non-empty list of filter objects),
//! `$not` (one filter object). A condition is a plain value (`$eq`) or an object of field
//! operators, all of which must match: `$eq $ne $in $nin $gt $gte $lt $lte $exists`, and
//! `$not` over another operator object.
//!
//! Semantics (docs/worker.md, "Filters", says the same for users):
//! - Positive operators (`$eq $in $gt $gte $lt $lte`) never match a missing key; on a
//!   list-valued key they match when any element does (each operator on its own:
//!   `{"$gt": 1, "$lt": 3}` matches `[0, 5]`).
//! - `$ne` is `$not: {$eq}` and `$nin` is `$not: {$in}`: they match a missing key, and a
//!   list only when no element is equal. `$not` matches whatever its operators do not.
//! - `$exists: true` matches when the key is present, whatever its value (`null` and `[]`
//!   included); `$exists: false` when it is absent.
//! - Strings, numbers and booleans compare only with their own type (`1` equals `1.0`,
//!   `-0` equals `0`; `"1"` is not `1`); booleans only with `$eq $ne $in $nin`. `null`,
//!   objects and nested lists in metadata never satisfy a positive operator.
//! - An operand string that is an RFC 3339 date-time (see [`datetime::parse`]) is an
//!   instant: it equals, and orders against, metadata strings that are date-times at the
//!   same instant (`"2024-01-01T01:00:00+01:00"` equals `"2024-01-01T00:00:00Z"`); a
//!   metadata string that is not a date-time never matches it. Other strings compare
//!   exactly, and order by Unicode code points.
//!
//! Operands are checked and converted when the filter is parsed (date-times to instants,
//! `$in` lists to sets), so matching a row does no parsing except of the row's own
//! strings against a date-time operand.

mod datetime;
mod eval;
#[cfg(test)]
mod reference_tests;
#[cfg(test)]
mod tests;

use serde_json::{Map, Value};
use std::collections::HashSet;

/// Most values one `$in` or `$nin` may list: matching goes through a set, so the cost per
/// row does not grow with the list, but parsing and the cache key do.
pub const MAX_IN_VALUES: usize = 4096;
/// Most entries one filter object (the top level or one nested in `$and`/`$or`/`$not`)
/// may have.
pub const MAX_KEYS: usize = 64;
/// Deepest nesting of filter objects and `$not`s: the top level is 1, each `$and`, `$or`
/// or `$not` (either kind) one more.
pub const MAX_DEPTH: usize = 8;
/// Most operators in a whole filter (a plain value, each field operator, each `$and`,
/// `$or` and `$not`): what matching one row may cost.
pub const MAX_CLAUSES: usize = 256;
/// Most values all the `$in` and `$nin` lists of a filter may hold together: as many as
/// [`MAX_KEYS`] full lists, the most a filter could hold before operators other than
/// `$in` existed, so every filter accepted then (some are in logs) is accepted now.
pub const MAX_VALUES: usize = MAX_KEYS * MAX_IN_VALUES;

/// A parsed filter: the top level's entries, all of which must match. The default (no
/// entries) matches everything.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Filter {
    clauses: Vec<Node>,
}

/// One entry of a filter object.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Field(String, Cond),
    And(Vec<Node>),
    Or(Vec<Node>),
    Not(Box<Node>),
}

/// A condition on one key's value (`None` when the key is absent).
#[derive(Debug, Clone, PartialEq)]
enum Cond {
    /// The key is present (`true`) or absent (`false`).
    Exists(bool),
    /// The value, or one element of a list, passes.
    Any(Test),
    Not(Box<Cond>),
    All(Vec<Cond>),
}

/// A test on one scalar.
#[derive(Debug, Clone, PartialEq)]
enum Test {
    /// `$eq` (one value) or `$in`.
    OneOf(Box<Accepted>),
    /// `$gt $gte $lt $lte`: the value's ordering against the bound is one of `accept`.
    Order {
        bound: Bound,
        accept: [std::cmp::Ordering; 2],
    },
}

/// A `$gt`/`$gte`/`$lt`/`$lte` operand.
#[derive(Debug, Clone, PartialEq)]
enum Bound {
    Number(f64),
    Text(String),
    /// A date-time operand: nanoseconds since the epoch.
    Instant(i128),
}

/// The values an `$eq`/`$in` accepts, by type: a lookup per metadata value, whatever the
/// size.
#[derive(Debug, Clone, PartialEq, Default)]
struct Accepted {
    /// Strings that are not date-times, compared exactly.
    strings: HashSet<String>,
    /// Date-time strings, as instants.
    instants: HashSet<i128>,
    /// Numbers by value (`1` and `1.0` are one value): the bits of the f64, -0 as 0.
    numbers: HashSet<u64>,
    bools: [bool; 2],
}

impl Accepted {
    /// Adds a scalar (the caller checked it is one).
    fn insert(&mut self, value: &Value) {
        match value {
            Value::String(s) => match datetime::parse(s) {
                Some(t) => {
                    self.instants.insert(t);
                }
                None => {
                    self.strings.insert(s.clone());
                }
            },
            Value::Number(n) => {
                if let Some(bits) = number_key(n) {
                    self.numbers.insert(bits);
                }
            }
            Value::Bool(b) => self.bools[usize::from(*b)] = true,
            _ => {}
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

fn is_scalar(v: &Value) -> bool {
    matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_))
}

/// A value for an error message, cut short when long.
fn show(v: &Value) -> String {
    let mut text = v.to_string();
    if let Some((cut, _)) = text.char_indices().nth(60) {
        text.truncate(cut);
        text.push('…');
    }
    text
}

const FIELD_OPERATORS: &str = "$eq, $ne, $in, $nin, $gt, $gte, $lt, $lte, $exists, $not";

impl Filter {
    /// Parses the JSON form; the error names the offending key and where it sits.
    pub fn parse(value: &Value) -> Result<Self, String> {
        let Value::Object(map) = value else {
            return Err("filter must be a JSON object of metadata keys".into());
        };
        let mut parser = Parser::default();
        let clauses = parser.object(map, "", 1)?;
        Ok(Self { clauses })
    }

    /// True when the filter has no entry (it matches everything).
    pub fn is_empty(&self) -> bool {
        self.clauses.is_empty()
    }
}

/// Counts what the whole filter holds against [`MAX_CLAUSES`] and [`MAX_VALUES`].
#[derive(Default)]
struct Parser {
    clauses: usize,
    values: usize,
}

/// " in $or[1]" for a nested position, "" at the top.
fn place(at: &str) -> String {
    if at.is_empty() {
        String::new()
    } else {
        format!(" in {at}")
    }
}

impl Parser {
    fn count_clause(&mut self) -> Result<(), String> {
        self.clauses += 1;
        if self.clauses > MAX_CLAUSES {
            return Err(format!(
                "too many operators: a filter may have at most {MAX_CLAUSES} (plain values, field operators, $and, $or and $not count one each)"
            ));
        }
        Ok(())
    }

    /// The entries of one filter object at `at` (a path such as `$and[0].$not`).
    fn object(
        &mut self,
        map: &Map<String, Value>,
        at: &str,
        depth: usize,
    ) -> Result<Vec<Node>, String> {
        if map.len() > MAX_KEYS {
            return Err(format!(
                "filter{} names {} keys; at most {MAX_KEYS} are allowed",
                place(at),
                map.len()
            ));
        }
        let mut nodes = Vec::with_capacity(map.len());
        for (key, value) in map {
            let node = match key.as_str() {
                "$and" | "$or" => {
                    self.count_clause()?;
                    let Value::Array(items) = value else {
                        return Err(format!(
                            "filter{}: {key} takes a non-empty list of filter objects, not {}",
                            place(at),
                            show(value)
                        ));
                    };
                    if items.is_empty() {
                        return Err(format!(
                            "filter{}: {key} takes a non-empty list of filter objects, not []",
                            place(at)
                        ));
                    }
                    let mut children = Vec::with_capacity(items.len());
                    for (i, item) in items.iter().enumerate() {
                        let path = join(at, &format!("{key}[{i}]"));
                        children.push(self.nested(item, &path, depth + 1)?);
                    }
                    if key == "$and" {
                        Node::And(children)
                    } else {
                        Node::Or(children)
                    }
                }
                "$not" => {
                    self.count_clause()?;
                    Node::Not(Box::new(self.nested(value, &join(at, "$not"), depth + 1)?))
                }
                op if op.starts_with('$') => {
                    return Err(format!(
                        "filter{}: unknown operator {op:?}; a filter object takes metadata keys, $and, $or and $not (field operators such as $gt go inside a key's condition: {{\"year\": {{\"$gt\": 2020}}}})",
                        place(at)
                    ))
                }
                _ => {
                    let cond = self.condition(value, depth).map_err(|e| {
                        format!("filter on {key:?}{}: {e}", place(at))
                    })?;
                    Node::Field(key.clone(), cond)
                }
            };
            nodes.push(node);
        }
        Ok(nodes)
    }

    /// A filter object inside `$and`, `$or` or `$not`: non-empty, one node.
    fn nested(&mut self, value: &Value, at: &str, depth: usize) -> Result<Node, String> {
        if depth > MAX_DEPTH {
            return Err(format!(
                "filter in {at}: nested deeper than {MAX_DEPTH} levels"
            ));
        }
        match value {
            Value::Object(map) if !map.is_empty() => {
                let mut nodes = self.object(map, at, depth)?;
                Ok(if nodes.len() == 1 {
                    nodes.pop().expect("one node")
                } else {
                    Node::And(nodes)
                })
            }
            other => Err(format!(
                "filter in {at}: must be a non-empty filter object, not {}",
                show(other)
            )),
        }
    }

    /// One key's condition: a plain value or an operator object. Errors leave out the
    /// key (the caller adds it).
    fn condition(&mut self, value: &Value, depth: usize) -> Result<Cond, String> {
        match value {
            Value::Object(ops) => self.operators(ops, depth),
            Value::Array(_) => Err("use {\"$in\": [...]} for lists".into()),
            Value::Null => Err("null never matches; give a string, number or boolean".into()),
            scalar => {
                self.count_clause()?;
                Ok(Cond::Any(one_of(std::slice::from_ref(scalar))))
            }
        }
    }

    /// An operator object: every operator must match.
    fn operators(&mut self, ops: &Map<String, Value>, depth: usize) -> Result<Cond, String> {
        if ops.is_empty() {
            return Err(format!(
                "an empty operator object; give a value or operators ({FIELD_OPERATORS})"
            ));
        }
        let mut conds = Vec::with_capacity(ops.len());
        for (op, operand) in ops {
            self.count_clause()?;
            let cond = match op.as_str() {
                "$eq" | "$ne" => {
                    if !is_scalar(operand) {
                        return Err(format!(
                            "{op} takes a string, number or boolean, not {}{}",
                            show(operand),
                            if operand.is_array() { " (use $in for lists)" } else { "" }
                        ));
                    }
                    let eq = Cond::Any(one_of(std::slice::from_ref(operand)));
                    if op == "$eq" {
                        eq
                    } else {
                        Cond::Not(Box::new(eq))
                    }
                }
                "$in" | "$nin" => {
                    let Value::Array(values) = operand else {
                        return Err(format!(
                            "{op} takes a list of strings, numbers and booleans, not {}",
                            show(operand)
                        ));
                    };
                    if let Some(bad) = values.iter().find(|v| !is_scalar(v)) {
                        return Err(format!(
                            "{op} takes strings, numbers and booleans, not {}",
                            show(bad)
                        ));
                    }
                    if values.len() > MAX_IN_VALUES {
                        return Err(format!(
                            "{op} lists {} values; at most {MAX_IN_VALUES} are allowed",
                            values.len()
                        ));
                    }
                    self.values += values.len();
                    if self.values > MAX_VALUES {
                        return Err(format!(
                            "too many values: a filter's $in and $nin lists may hold at most {MAX_VALUES} together"
                        ));
                    }
                    let any = Cond::Any(one_of(values));
                    if op == "$in" {
                        any
                    } else {
                        Cond::Not(Box::new(any))
                    }
                }
                "$gt" | "$gte" | "$lt" | "$lte" => Cond::Any(order(op, operand)?),
                "$exists" => match operand {
                    Value::Bool(b) => Cond::Exists(*b),
                    other => {
                        return Err(format!("$exists takes true or false, not {}", show(other)))
                    }
                },
                "$not" => {
                    if depth + 1 > MAX_DEPTH {
                        return Err(format!("$not: nested deeper than {MAX_DEPTH} levels"));
                    }
                    match operand {
                        Value::Object(inner) if !inner.is_empty() => Cond::Not(Box::new(
                            self.operators(inner, depth + 1)
                                .map_err(|e| format!("$not: {e}"))?,
                        )),
                        other => {
                            return Err(format!(
                                "$not takes an operator object such as {{\"$gt\": 3}}, not {}",
                                show(other)
                            ))
                        }
                    }
                }
                other if other.starts_with('$') => {
                    return Err(format!(
                        "unknown operator {other:?}; the operators are {FIELD_OPERATORS}"
                    ))
                }
                other => {
                    return Err(format!(
                        "{other:?} is not an operator (operators start with $: {FIELD_OPERATORS}); metadata values are never objects"
                    ))
                }
            };
            conds.push(cond);
        }
        Ok(if conds.len() == 1 {
            conds.pop().expect("one condition")
        } else {
            Cond::All(conds)
        })
    }
}

/// `$eq`/`$in` over scalars the caller checked.
fn one_of(values: &[Value]) -> Test {
    let mut accepted = Accepted::default();
    values.iter().for_each(|v| accepted.insert(v));
    Test::OneOf(Box::new(accepted))
}

/// `$gt`/`$gte`/`$lt`/`$lte` with its operand.
fn order(op: &str, operand: &Value) -> Result<Test, String> {
    use std::cmp::Ordering::{Equal, Greater, Less};
    let accept = match op {
        "$gt" => [Greater, Greater],
        "$gte" => [Greater, Equal],
        "$lt" => [Less, Less],
        _ => [Less, Equal],
    };
    let bound = match operand {
        Value::Number(n) => n.as_f64().map(Bound::Number),
        Value::String(s) => Some(match datetime::parse(s) {
            Some(t) => Bound::Instant(t),
            None => Bound::Text(s.clone()),
        }),
        _ => None,
    }
    .ok_or_else(|| {
        format!(
            "{op} takes a number, a string or an RFC 3339 date-time, not {}",
            show(operand)
        )
    })?;
    Ok(Test::Order { bound, accept })
}

fn join(at: &str, step: &str) -> String {
    if at.is_empty() {
        step.to_string()
    } else {
        format!("{at}.{step}")
    }
}
