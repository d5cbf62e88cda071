//! The engine against a deliberately naive reference: random metadata and random filters
//! (seeded), the reference walking the filter's JSON directly with its own date-time
//! reading. Nothing here calls into the engine but `Filter::parse` and `matches`.

use super::Filter;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use std::cmp::Ordering;

// ---- the reference ----------------------------------------------------------------

fn r_filter(filter: &Value, m: &Map<String, Value>) -> bool {
    let mut all = true;
    for (key, c) in filter.as_object().expect("filter object") {
        let ok = if key == "$and" {
            c.as_array().unwrap().iter().all(|x| r_filter(x, m))
        } else if key == "$or" {
            c.as_array().unwrap().iter().any(|x| r_filter(x, m))
        } else if key == "$not" {
            !r_filter(c, m)
        } else {
            r_cond(c, m.get(key))
        };
        all = all && ok;
    }
    all
}

fn r_cond(c: &Value, have: Option<&Value>) -> bool {
    match c {
        Value::Object(ops) => ops.iter().all(|(op, x)| r_op(op, x, have)),
        plain => r_op("$eq", plain, have),
    }
}

fn r_op(op: &str, x: &Value, have: Option<&Value>) -> bool {
    match op {
        "$exists" => x.as_bool().unwrap() == have.is_some(),
        "$ne" => !r_op("$eq", x, have),
        "$nin" => !r_op("$in", x, have),
        "$not" => !r_cond(x, have),
        _ => {
            let Some(have) = have else { return false };
            let elements: Vec<&Value> = match have {
                Value::Array(items) => items.iter().collect(),
                v => vec![v],
            };
            let mut any = false;
            for e in elements {
                if r_one(op, x, e) {
                    any = true;
                }
            }
            any
        }
    }
}

fn r_one(op: &str, x: &Value, e: &Value) -> bool {
    match op {
        "$in" => x.as_array().unwrap().iter().any(|y| r_one("$eq", y, e)),
        "$eq" => match (x, e) {
            (Value::Bool(a), Value::Bool(b)) => a == b,
            _ => r_order(x, e) == Some(Ordering::Equal),
        },
        "$gt" => r_order(x, e) == Some(Ordering::Greater),
        "$gte" => matches!(r_order(x, e), Some(Ordering::Greater | Ordering::Equal)),
        "$lt" => r_order(x, e) == Some(Ordering::Less),
        "$lte" => matches!(r_order(x, e), Some(Ordering::Less | Ordering::Equal)),
        other => panic!("reference does not know {other}"),
    }
}

/// How the element `e` orders against the operand `x`, when they compare at all.
fn r_order(x: &Value, e: &Value) -> Option<Ordering> {
    match (x, e) {
        (Value::Number(x), Value::Number(e)) => {
            e.as_f64().unwrap().partial_cmp(&x.as_f64().unwrap())
        }
        (Value::String(x), Value::String(e)) => match r_instant(x) {
            Some(tx) => r_instant(e).map(|te| te.cmp(&tx)),
            None => {
                let e: Vec<u32> = e.chars().map(|c| c as u32).collect();
                let x: Vec<u32> = x.chars().map(|c| c as u32).collect();
                Some(e.cmp(&x))
            }
        },
        _ => None,
    }
}

fn r_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn r_month_days(y: i64, m: i64) -> i64 {
    [
        31,
        if r_leap(y) { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ][(m - 1) as usize]
}

/// Nanoseconds since the epoch, read character by character, days counted year by year.
fn r_instant(s: &str) -> Option<i128> {
    let c: Vec<char> = s.chars().collect();
    let pattern: Vec<char> = "dddd-dd-ddTdd:dd:dd".chars().collect();
    if c.len() < 20 {
        return None;
    }
    for (i, p) in pattern.iter().enumerate() {
        let ok = match p {
            'd' => c[i].is_ascii_digit(),
            'T' => c[i] == 'T' || c[i] == 't' || c[i] == ' ',
            lit => c[i] == *lit,
        };
        if !ok {
            return None;
        }
    }
    let n = |a: usize, b: usize| c[a..b].iter().collect::<String>().parse::<i64>().unwrap();
    let (y, mo, d, h, mi, sec) = (n(0, 4), n(5, 7), n(8, 10), n(11, 13), n(14, 16), n(17, 19));
    if !(1..=12).contains(&mo) || d < 1 || d > r_month_days(y, mo) || h > 23 || mi > 59 || sec > 60
    {
        return None;
    }
    let mut i = 19;
    let mut frac = String::new();
    if c.get(i) == Some(&'.') {
        i += 1;
        while i < c.len() && c[i].is_ascii_digit() {
            frac.push(c[i]);
            i += 1;
        }
        if frac.is_empty() {
            return None;
        }
    }
    let tail: String = c[i..].iter().collect();
    let offset = if tail == "Z" || tail == "z" {
        0
    } else {
        let t: Vec<char> = tail.chars().collect();
        if t.len() != 6 || (t[0] != '+' && t[0] != '-') || t[3] != ':' {
            return None;
        }
        if ![1, 2, 4, 5].iter().all(|&k| t[k].is_ascii_digit()) {
            return None;
        }
        let oh = tail[1..3].parse::<i64>().unwrap();
        let om = tail[4..6].parse::<i64>().unwrap();
        if oh > 23 || om > 59 {
            return None;
        }
        if t[0] == '+' {
            oh * 60 + om
        } else {
            -(oh * 60 + om)
        }
    };
    let mut days = 0i64;
    if y >= 1970 {
        for year in 1970..y {
            days += if r_leap(year) { 366 } else { 365 };
        }
    } else {
        for year in y..1970 {
            days -= if r_leap(year) { 366 } else { 365 };
        }
    }
    for month in 1..mo {
        days += r_month_days(y, month);
    }
    days += d - 1;
    let seconds = days * 86400 + h * 3600 + mi * 60 + sec - offset * 60;
    let mut digits: String = frac.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    Some(seconds as i128 * 1_000_000_000 + digits.parse::<i128>().unwrap())
}

// ---- random metadata and filters -----------------------------------------------------

const KEYS: [&str; 4] = ["a", "b", "c", "d"];

const STRINGS: [&str; 26] = [
    "",
    "a",
    "b",
    "ab",
    "B",
    "é",
    "2024",
    "2024-01-01",
    "x",
    "2024-01-01T00:00:00Z",
    "2024-01-01T01:00:00+01:00",
    "2023-12-31T23:00:00-01:00",
    "2024-01-01T00:00:00.5Z",
    "2024-01-01T00:00:00.500000000001Z",
    "2024-01-01t00:00:00.25z",
    "2024-01-01 00:00:00Z",
    "2024-02-29T12:00:00Z",
    "2030-06-15T08:30:00+05:30",
    "1999-12-31T23:59:59Z",
    "1960-03-01T00:00:00-00:00",
    "2016-12-31T23:59:60Z",
    "2017-01-01T00:00:00Z",
    "2023-02-29T00:00:00Z",
    "2024-13-01T00:00:00Z",
    "2024-01-01T00:00:00",
    "2024-01-01T00:00:00+0100",
];

fn number(rng: &mut StdRng) -> Value {
    match rng.gen_range(0..3) {
        0 => json!(rng.gen_range(-2i64..=3)),
        1 => json!([0.5, 1.0, 2.0, -0.0, 2.5, -1.5][rng.gen_range(0..6)]),
        _ => json!(rng.gen_range(0u64..=2)),
    }
}

fn string(rng: &mut StdRng) -> Value {
    json!(STRINGS.choose(rng).unwrap())
}

fn scalar(rng: &mut StdRng) -> Value {
    match rng.gen_range(0..10) {
        0..=3 => number(rng),
        4..=7 => string(rng),
        _ => json!(rng.gen_bool(0.5)),
    }
}

fn metadata(rng: &mut StdRng) -> Map<String, Value> {
    let mut m = Map::new();
    for key in KEYS {
        let value = match rng.gen_range(0..20) {
            0..=5 => continue,
            6..=14 => scalar(rng),
            15..=18 => Value::Array((0..rng.gen_range(0..4)).map(|_| scalar(rng)).collect()),
            _ => [json!(null), json!([[1], null, "a"]), json!([])][rng.gen_range(0..3)].clone(),
        };
        m.insert(key.to_string(), value);
    }
    m
}

fn operators(rng: &mut StdRng, depth: usize) -> Value {
    let mut ops = Map::new();
    for _ in 0..rng.gen_range(1..=3) {
        let names = [
            "$eq", "$ne", "$in", "$nin", "$gt", "$gte", "$lt", "$lte", "$exists", "$not",
        ];
        let op = names[rng.gen_range(0..if depth < 3 { 10 } else { 9 })];
        let operand = match op {
            "$eq" | "$ne" => scalar(rng),
            "$in" | "$nin" => Value::Array((0..rng.gen_range(0..5)).map(|_| scalar(rng)).collect()),
            "$exists" => json!(rng.gen_bool(0.5)),
            "$not" => operators(rng, depth + 1),
            _ => {
                if rng.gen_bool(0.5) {
                    number(rng)
                } else {
                    string(rng)
                }
            }
        };
        ops.insert(op.to_string(), operand);
    }
    Value::Object(ops)
}

fn filter(rng: &mut StdRng, depth: usize) -> Value {
    let mut f = Map::new();
    for _ in 0..rng.gen_range(1..=3) {
        if depth < 3 && rng.gen_bool(0.3) {
            let op = ["$and", "$or", "$not"][rng.gen_range(0..3)];
            let operand = if op == "$not" {
                filter(rng, depth + 1)
            } else {
                Value::Array(
                    (0..rng.gen_range(1..=3))
                        .map(|_| filter(rng, depth + 1))
                        .collect(),
                )
            };
            f.insert(op.to_string(), operand);
        } else {
            let key = KEYS.choose(rng).unwrap().to_string();
            let cond = if rng.gen_bool(0.3) {
                scalar(rng)
            } else {
                operators(rng, depth)
            };
            f.insert(key, cond);
        }
    }
    Value::Object(f)
}

#[test]
fn the_reference_reads_date_times_as_the_engine_documents() {
    assert_eq!(r_instant("1970-01-01T00:00:01.5Z"), Some(1_500_000_000));
    assert_eq!(
        r_instant("2024-01-01T01:00:00+01:00"),
        r_instant("2024-01-01T00:00:00Z")
    );
    assert_eq!(
        r_instant("2024-01-01T00:00:00Z"),
        Some(1_704_067_200_000_000_000)
    );
    assert_eq!(
        r_instant("1960-03-01T00:00:00Z"),
        Some(-310_435_200_000_000_000)
    );
    assert_eq!(r_instant("2023-02-29T00:00:00Z"), None);
}

#[test]
fn random_filters_match_exactly_what_the_reference_matches() {
    let mut rng = StdRng::seed_from_u64(23);
    let rows: Vec<Map<String, Value>> = (0..64).map(|_| metadata(&mut rng)).collect();
    let (mut checked, mut matched) = (0usize, 0usize);
    for _ in 0..3000 {
        let f = filter(&mut rng, 1);
        let engine = Filter::parse(&f).unwrap_or_else(|e| panic!("{f}: {e}"));
        for row in rows.choose_multiple(&mut rng, 16) {
            let want = r_filter(&f, row);
            assert_eq!(
                engine.matches(row),
                want,
                "filter {f}\nmetadata {}",
                Value::Object(row.clone())
            );
            checked += 1;
            matched += usize::from(want);
        }
    }
    // Neither outcome may dominate, or the comparison proves little.
    assert!(
        matched > checked / 10 && matched < checked * 9 / 10,
        "{matched} of {checked}"
    );
}

#[test]
fn damaged_filters_are_refused_or_evaluated_like_the_reference() {
    let mut rng = StdRng::seed_from_u64(4);
    let rows: Vec<Map<String, Value>> = (0..16).map(|_| metadata(&mut rng)).collect();
    let junk = [
        json!(null),
        json!([]),
        json!({}),
        json!("x"),
        json!(1),
        json!(true),
        json!({"$zz": 1}),
        json!([{}]),
        json!([1]),
        json!({"a": {"b": 1}}),
        json!([[1]]),
    ];
    let (mut refused, mut accepted) = (0, 0);
    for _ in 0..3000 {
        let mut f = filter(&mut rng, 1);
        damage(&mut f, &junk, &mut rng);
        match Filter::parse(&f) {
            Err(e) => {
                assert!(e.starts_with("filter"), "{f}: {e}");
                refused += 1;
            }
            Ok(engine) => {
                accepted += 1;
                for row in &rows {
                    assert_eq!(engine.matches(row), r_filter(&f, row), "filter {f}");
                }
            }
        }
    }
    assert!(
        refused > 500 && accepted > 100,
        "{refused} refused, {accepted} accepted"
    );
}

/// Replaces one random node below the top of `v` with junk.
fn damage(v: &mut Value, junk: &[Value], rng: &mut StdRng) {
    let children: Vec<&mut Value> = match v {
        Value::Object(m) => m.values_mut().collect(),
        Value::Array(a) => a.iter_mut().collect(),
        _ => Vec::new(),
    };
    if children.is_empty() {
        return;
    }
    let n = children.len();
    let child = children.into_iter().nth(rng.gen_range(0..n)).unwrap();
    if rng.gen_bool(0.4) || !(child.is_object() || child.is_array()) {
        *child = junk.choose(rng).unwrap().clone();
    } else {
        damage(child, junk, rng);
    }
}
