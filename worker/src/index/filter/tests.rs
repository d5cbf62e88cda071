use super::*;
use crate::log::Metadata;
use serde_json::json;

fn meta(v: Value) -> Metadata {
    v.as_object().unwrap().clone()
}

fn f(v: Value) -> Filter {
    Filter::parse(&v).unwrap_or_else(|e| panic!("{v}: {e}"))
}

/// Which of `rows` the filter matches, by index.
fn which(filter: Value, rows: &[Value]) -> Vec<usize> {
    let filter = f(filter);
    (0..rows.len())
        .filter(|&i| filter.matches(&meta(rows[i].clone())))
        .collect()
}

fn err(v: Value) -> String {
    Filter::parse(&v).expect_err(&v.to_string())
}

#[test]
fn equality_and_in_clauses_must_all_match() {
    let f = f(json!({"lang": "en", "tag": {"$in": ["a", "b"]}}));
    assert!(f.matches(&meta(json!({"lang": "en", "tag": "b", "x": 1}))));
    assert!(!f.matches(&meta(json!({"lang": "en", "tag": "c"}))));
    assert!(!f.matches(&meta(json!({"lang": "de", "tag": "a"}))));
    assert!(!f.matches(&meta(json!({"tag": "a"}))));
}

#[test]
fn list_metadata_matches_element_wise() {
    let tagged = meta(json!({"tags": ["search", "platform"], "v": [1, 2]}));
    assert!(f(json!({"tags": "platform"})).matches(&tagged));
    assert!(f(json!({"tags": {"$in": ["x", "search"]}})).matches(&tagged));
    assert!(f(json!({"v": 2.0})).matches(&tagged));
    assert!(!f(json!({"tags": "ml"})).matches(&tagged));
    assert!(!f(json!({"tags": {"$in": ["ml"]}})).matches(&tagged));
}

#[test]
fn numbers_match_across_integer_and_float() {
    assert!(f(json!({"v": 1})).matches(&meta(json!({"v": 1.0}))));
    let rows = [
        json!({"v": 1}),
        json!({"v": 1.5}),
        json!({"v": 2.0}),
        json!({"v": -3}),
    ];
    assert_eq!(which(json!({"v": {"$gt": 1.0}}), &rows), [1, 2]);
    assert_eq!(which(json!({"v": {"$gte": 1}}), &rows), [0, 1, 2]);
    assert_eq!(which(json!({"v": {"$lt": 1.5}}), &rows), [0, 3]);
    assert_eq!(which(json!({"v": {"$lte": 2}}), &rows), [0, 1, 2, 3]);
    assert_eq!(which(json!({"v": {"$ne": 2}}), &rows), [0, 1, 3]);
    assert_eq!(which(json!({"v": {"$in": [2, -3.0]}}), &rows), [2, 3]);
}

#[test]
fn zero_matches_negative_zero() {
    assert!(f(json!({"v": -0.0})).matches(&meta(json!({"v": 0}))));
    assert!(f(json!({"v": {"$gte": 0}})).matches(&meta(json!({"v": -0.0}))));
    assert!(!f(json!({"v": {"$ne": 0}})).matches(&meta(json!({"v": -0.0}))));
}

#[test]
fn each_operator_on_scalars() {
    let rows = [
        json!({"k": "b"}),
        json!({"k": 2}),
        json!({"k": true}),
        json!({"other": 1}),
        json!({"k": null}),
    ];
    assert_eq!(which(json!({"k": {"$eq": "b"}}), &rows), [0]);
    assert_eq!(which(json!({"k": {"$ne": "b"}}), &rows), [1, 2, 3, 4]);
    assert_eq!(which(json!({"k": {"$in": ["b", true]}}), &rows), [0, 2]);
    assert_eq!(which(json!({"k": {"$nin": ["b", true]}}), &rows), [1, 3, 4]);
    assert_eq!(which(json!({"k": {"$gt": "a"}}), &rows), [0]);
    assert_eq!(which(json!({"k": {"$gte": "b"}}), &rows), [0]);
    assert_eq!(
        which(json!({"k": {"$lt": "b"}}), &rows),
        Vec::<usize>::new()
    );
    assert_eq!(which(json!({"k": {"$lte": 2}}), &rows), [1]);
    assert_eq!(which(json!({"k": {"$exists": true}}), &rows), [0, 1, 2, 4]);
    assert_eq!(which(json!({"k": {"$exists": false}}), &rows), [3]);
    assert_eq!(
        which(json!({"k": {"$not": {"$gt": 1}}}), &rows),
        [0, 2, 3, 4]
    );
    assert_eq!(which(json!({"k": false}), &rows), Vec::<usize>::new());
    assert_eq!(which(json!({"k": {"$ne": false}}), &rows), [0, 1, 2, 3, 4]);
}

#[test]
fn several_operators_in_one_object_must_all_match() {
    let rows: Vec<Value> = (2018..2026).map(|y| json!({ "year": y })).collect();
    let got = which(json!({"year": {"$gte": 2020, "$lt": 2024}}), &rows);
    assert_eq!(got, [2, 3, 4, 5]);
    let got = which(
        json!({"year": {"$gte": 2020, "$lt": 2024, "$ne": 2022}}),
        &rows,
    );
    assert_eq!(got, [2, 3, 5]);
}

#[test]
fn strings_order_by_code_point_and_never_against_numbers() {
    let rows = [
        json!({"s": "Zebra"}),
        json!({"s": "apple"}),
        json!({"s": "é"}),
        json!({"s": 5}),
    ];
    assert_eq!(which(json!({"s": {"$gt": "Z"}}), &rows), [0, 1, 2]);
    assert_eq!(which(json!({"s": {"$lt": "a"}}), &rows), [0]);
    assert_eq!(which(json!({"s": {"$gt": "z"}}), &rows), [2]);
    assert_eq!(which(json!({"s": {"$gt": 1}}), &rows), [3]);
    assert_eq!(
        which(json!({"s": {"$lt": "6"}}), &rows),
        Vec::<usize>::new()
    );
}

#[test]
fn lists_missing_keys_and_negations_follow_mongodb() {
    let rows = [
        json!({"t": ["a", "b"]}),
        json!({"t": ["c"]}),
        json!({"t": []}),
        json!({}),
        json!({"t": "a"}),
        json!({"t": [1, 5]}),
    ];
    assert_eq!(which(json!({"t": "a"}), &rows), [0, 4]);
    assert_eq!(which(json!({"t": {"$ne": "a"}}), &rows), [1, 2, 3, 5]);
    assert_eq!(which(json!({"t": {"$nin": ["a", "c"]}}), &rows), [2, 3, 5]);
    assert_eq!(which(json!({"t": {"$in": ["b", "c"]}}), &rows), [0, 1]);
    assert_eq!(
        which(json!({"t": {"$exists": true}}), &rows),
        [0, 1, 2, 4, 5]
    );
    assert_eq!(
        which(json!({"t": {"$not": {"$in": ["a"]}}}), &rows),
        [1, 2, 3, 5]
    );
    // Each operator may be met by a different element, as in MongoDB.
    assert_eq!(which(json!({"t": {"$gt": 2, "$lt": 3}}), &rows), [5]);
    assert_eq!(which(json!({"t": {"$in": []}}), &rows), Vec::<usize>::new());
    assert_eq!(which(json!({"t": {"$nin": []}}), &rows), [0, 1, 2, 3, 4, 5]);
}

#[test]
fn date_times_compare_as_instants_whatever_the_offset() {
    let rows = [
        json!({"at": "2024-01-01T00:00:00Z"}),
        json!({"at": "2024-01-01T01:00:00+01:00"}),
        json!({"at": "2023-12-31T23:59:59.999-00:00"}),
        json!({"at": "2024-01-01T00:00:00.000000001Z"}),
        json!({"at": "not a date"}),
        json!({"at": ["1999-01-01T00:00:00Z", "2030-06-01t12:00:00z"]}),
        json!({"at": 1_704_067_200}),
    ];
    let at = "2024-01-01T00:00:00Z";
    assert_eq!(which(json!({ "at": at }), &rows), [0, 1]);
    assert_eq!(
        which(json!({"at": "2024-01-01T01:00:00+01:00"}), &rows),
        [0, 1]
    );
    assert_eq!(which(json!({"at": {"$in": ["x", at]}}), &rows), [0, 1]);
    assert_eq!(which(json!({"at": {"$ne": at}}), &rows), [2, 3, 4, 5, 6]);
    assert_eq!(which(json!({"at": {"$gt": at}}), &rows), [3, 5]);
    assert_eq!(
        which(json!({"at": {"$gte": "2024-01-01T02:00:00+02:00"}}), &rows),
        [0, 1, 3, 5]
    );
    assert_eq!(which(json!({"at": {"$lt": at}}), &rows), [2, 5]);
    // Each operator on its own: the list [1999, 2030] has one element after and one before.
    assert_eq!(
        which(json!({"at": {"$gte": at, "$lte": at}}), &rows),
        [0, 1, 5]
    );
    // A string that is not a date-time orders its strings lexicographically.
    assert_eq!(
        which(json!({"at": {"$gte": "2024"}}), &rows),
        [0, 1, 3, 4, 5]
    );
}

#[test]
fn logical_operators_nest() {
    let rows = [
        json!({"a": 1, "b": "x"}),
        json!({"a": 2, "b": "y"}),
        json!({"a": 3}),
        json!({"b": "x"}),
    ];
    assert_eq!(which(json!({"$or": [{"a": 1}, {"b": "y"}]}), &rows), [0, 1]);
    assert_eq!(
        which(
            json!({"$and": [{"a": {"$gte": 2}}, {"b": {"$exists": false}}]}),
            &rows
        ),
        [2]
    );
    assert_eq!(which(json!({"$not": {"a": {"$lt": 3}}}), &rows), [2, 3]);
    assert_eq!(which(json!({"$not": {"a": 1, "b": "x"}}), &rows), [1, 2, 3]);
    assert_eq!(
        which(
            json!({"b": {"$exists": true}, "$or": [{"a": {"$exists": false}}, {"$not": {"$or": [{"a": 1}, {"a": 3}]}}]}),
            &rows
        ),
        [1, 3]
    );
    assert!(f(json!({"$or": [{"a": 9}]})).matches(&meta(json!({"a": 9}))));
    assert!(!f(json!({"$and": [{"a": 9}]})).is_empty());
    assert!(Filter::default().matches(&meta(json!({}))) && Filter::default().is_empty());
    assert!(f(json!({})).is_empty());
}

#[test]
fn unsupported_operators_are_rejected_with_the_key() {
    let e = err(json!({"year": {"$regex": "^19"}}));
    assert!(e.contains("\"year\"") && e.contains("$regex"), "{e}");
    assert!(Filter::parse(&json!([1])).is_err());
    let e = err(json!({"$nor": [{"a": 1}]}));
    assert!(e.contains("$nor"), "{e}");
    let e = err(json!({"$gt": 3}));
    assert!(e.contains("$gt"), "{e}");
    let e = err(json!({"a": {"b": 1}}));
    assert!(
        e.contains("\"a\"") && e.contains("\"b\" is not an operator"),
        "{e}"
    );
    let e = err(json!({"$or": [{"a": 1}, {"year": {"$gte": 1, "$foo": 2}}]}));
    assert!(
        e.starts_with("filter on \"year\" in $or[1]:") && e.contains("$foo"),
        "{e}"
    );
}

#[test]
fn wrong_operands_are_rejected_naming_the_key_and_operator() {
    let e = err(json!({"year": {"$gt": true}}));
    assert_eq!(
        e,
        "filter on \"year\": $gt takes a number, a string or an RFC 3339 date-time, not true"
    );
    for (bad, words) in [
        (json!({"k": {"$lte": null}}), "$lte takes"),
        (json!({"k": {"$gte": [1]}}), "$gte takes"),
        (json!({"k": {"$eq": [1]}}), "use $in for lists"),
        (json!({"k": {"$ne": {}}}), "$ne takes"),
        (json!({"k": {"$in": "a"}}), "$in takes a list"),
        (json!({"k": {"$nin": [null]}}), "$nin takes strings"),
        (
            json!({"k": {"$exists": 1}}),
            "$exists takes true or false, not 1",
        ),
        (json!({"k": {"$not": 3}}), "$not takes an operator object"),
        (json!({"k": {"$not": {}}}), "$not takes an operator object"),
        (json!({"k": {"$not": {"$gt": false}}}), "$not: $gt takes"),
        (json!({"k": {}}), "empty operator object"),
        (json!({"k": [1]}), "use {\"$in\": [...]} for lists"),
        (json!({"k": null}), "null never matches"),
        (json!({"$and": []}), "$and takes a non-empty list"),
        (json!({"$or": {"a": 1}}), "$or takes a non-empty list"),
        (
            json!({"$and": [{}]}),
            "filter in $and[0]: must be a non-empty filter object",
        ),
        (
            json!({"$or": [1]}),
            "filter in $or[0]: must be a non-empty filter object, not 1",
        ),
        (json!({"$not": []}), "filter in $not: must be"),
        (
            json!({"$not": {"$and": [{"k": {"$in": 1}}]}}),
            "filter on \"k\" in $not.$and[0]: $in",
        ),
    ] {
        let e = err(bad.clone());
        assert!(e.contains(words), "{bad}: {e}");
        if !bad
            .as_object()
            .unwrap()
            .keys()
            .next()
            .unwrap()
            .starts_with('$')
        {
            assert!(e.contains("\"k\""), "{bad}: {e}");
        }
    }
    let long = vec![0; 300];
    let e = err(json!({"k": {"$in": ["x".repeat(500)], "$gt": long}}));
    assert!(e.len() < 200, "long operands are cut short: {e}");
}

#[test]
fn large_in_lists_match_through_a_set_and_oversized_ones_are_refused() {
    let mut wanted: Vec<Value> = (0..MAX_IN_VALUES - 2)
        .map(|i| json!(format!("id-{i}")))
        .collect();
    wanted.push(json!(7));
    wanted.push(json!(false));
    let f = f(json!({"id": {"$in": wanted}}));
    assert!(f.matches(&meta(json!({"id": "id-4000"}))));
    assert!(f.matches(&meta(json!({"id": 7.0}))));
    assert!(f.matches(&meta(json!({"id": [true, false]}))));
    assert!(!f.matches(&meta(json!({"id": "id-4094"}))));
    assert!(!f.matches(&meta(json!({"id": true}))));
    assert!(!f.matches(&meta(json!({"id": "7"}))));
    let too_many: Vec<usize> = (0..=MAX_IN_VALUES).collect();
    for op in ["$in", "$nin"] {
        let e = err(json!({"id": {op: too_many}}));
        assert!(
            e.contains("\"id\"") && e.contains(&MAX_IN_VALUES.to_string()),
            "{e}"
        );
    }
    let keys: Map<String, Value> = (0..=MAX_KEYS)
        .map(|i| (format!("k{i}"), json!(1)))
        .collect();
    let e = err(Value::Object(keys.clone()));
    assert!(e.contains(&MAX_KEYS.to_string()), "{e}");
    let e = err(json!({"$or": [{"a": 1}, keys]}));
    assert!(
        e.contains(&MAX_KEYS.to_string()) && e.contains("$or[1]"),
        "{e}"
    );
}

#[test]
fn every_filter_accepted_before_operators_is_still_accepted() {
    // The largest filter of the old language: MAX_KEYS full $in lists.
    let full: Vec<usize> = (0..MAX_IN_VALUES).collect();
    let keys: Map<String, Value> = (0..MAX_KEYS)
        .map(|i| (format!("k{i}"), json!({"$in": full})))
        .collect();
    let filter = f(Value::Object(keys.clone()));
    let row: Metadata = (0..MAX_KEYS).map(|i| (format!("k{i}"), json!(i))).collect();
    assert!(filter.matches(&row));
    // One more value anywhere is over MAX_VALUES.
    let e = err(json!({"$and": [keys, {"x": {"$nin": [1]}}]}));
    assert!(e.contains(&MAX_VALUES.to_string()), "{e}");
}

#[test]
fn nesting_and_operator_counts_are_bounded() {
    let mut deep = json!({"a": 1});
    for _ in 1..MAX_DEPTH {
        deep = json!({ "$not": deep });
    }
    assert!(Filter::parse(&deep).is_ok());
    let e = err(json!({ "$and": [deep] }));
    assert!(e.contains(&format!("deeper than {MAX_DEPTH}")), "{e}");
    let mut ops = json!({"$gt": 1});
    for _ in 1..MAX_DEPTH {
        ops = json!({ "$not": ops });
    }
    assert!(Filter::parse(&json!({ "a": ops })).is_ok());
    let e = err(json!({"a": {"$not": ops}}));
    assert!(
        e.contains("\"a\"") && e.contains(&format!("deeper than {MAX_DEPTH}")),
        "{e}"
    );
    let e = err(json!({"$or": [{"$not": {"a": {"$not": ops}}}]}));
    assert!(e.contains("deeper"), "{e}");

    let many: Vec<Value> = (0..MAX_CLAUSES).map(|i| json!({ "a": i })).collect();
    let e = err(json!({ "$or": many }));
    assert!(e.contains(&MAX_CLAUSES.to_string()), "{e}");
    let many: Vec<Value> = (0..MAX_CLAUSES - 1).map(|i| json!({ "a": i })).collect();
    assert!(Filter::parse(&json!({ "$or": many })).is_ok());
}

#[test]
fn values_that_can_never_match_are_rejected() {
    let e = err(json!({"tag": {"$in": ["a", {}]}}));
    assert!(e.contains("tag") && e.contains("{}"), "{e}");
    assert!(Filter::parse(&json!({"tag": {"$in": [[1]]}})).is_err());
    assert!(Filter::parse(&json!({"tag": null})).is_err());
    assert!(Filter::parse(&json!({"tag": {"$in": ["a", 1, true]}})).is_ok());
}
