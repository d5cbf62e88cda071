//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]` attributes and
//! the request and response types (`GET /openapi.json`). The router registers every route
//! through `utoipa_axum::routes!`, so a route cannot be served without being described.
//!
//! The types here exist only to describe JSON that the handlers read as free-form values
//! (metadata, filters) or that several handlers share (the error body).

use super::error::ErrorBody;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::collections::BTreeMap;
use std::sync::LazyLock;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, ResponseBuilder};
use utoipa::{IntoParams, Modify, ToSchema};

/// A metadata value: a string, number or boolean, or a list of them.
#[derive(ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum MetadataValue {
    Scalar(Scalar),
    List(Vec<Scalar>),
}

/// A string, number or boolean.
#[derive(ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum Scalar {
    String(String),
    Number(f64),
    Bool(bool),
}

/// Document metadata: every value a scalar or a list of scalars.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Metadata(BTreeMap<String, MetadataValue>);

/// A metadata filter (docs/worker.md, "Filters"): every entry must match. An entry is a
/// metadata key with its condition, or a logical operator: `$and` / `$or` take a
/// non-empty list of filters, `$not` one filter; they nest. A condition is a plain value
/// (equality; a list-valued field matches when one of its elements is equal) or an object
/// of field operators, all of which must match, e.g.
/// `{"lang": "en", "year": {"$gte": 2020, "$lt": 2024}, "$or": [{"tag": "a"}, {"tag": {"$exists": false}}]}`.
/// `$ne`, `$nin` and `$not` match a missing key; a list matches `$ne` only when no element
/// is equal. A string operand that is an RFC 3339 date-time compares as an instant with
/// metadata strings that are date-times. At most 64 entries per filter object, 8 levels
/// of nesting, 256 operators and 4096 values per `$in`/`$nin` list.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Filter(BTreeMap<String, Condition>);

/// One entry's value in a [`Filter`]: a metadata key's condition, or the operand of
/// `$and`/`$or` (a list of filters) or `$not` (a filter).
#[derive(ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum Condition {
    /// Equality with this value.
    Equals(Scalar),
    /// Field operators, all of which must match (under `$not`, a whole filter).
    Operators(FieldOperators),
    /// The filters of `$and` or `$or`.
    #[schema(value_type = Vec<Object>)]
    Filters(Vec<BTreeMap<String, Condition>>),
}

/// Field operators on one metadata key; several in one object must all match. Any key
/// outside these is refused (under a top-level `$not`, the object is a filter instead).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct FieldOperators {
    /// Equal to the value (on a list: some element is).
    #[serde(rename = "$eq", default)]
    eq: Scalar,
    /// Not equal: the key is missing, or no element equals the value.
    #[serde(rename = "$ne", default)]
    ne: Scalar,
    /// Equal to one of the values.
    #[serde(rename = "$in", default)]
    #[schema(max_items = 4096)]
    r#in: Vec<Scalar>,
    /// Equal to none of the values (the key may be missing).
    #[serde(rename = "$nin", default)]
    #[schema(max_items = 4096)]
    nin: Vec<Scalar>,
    /// Greater than.
    #[serde(rename = "$gt", default)]
    gt: Bound,
    /// Greater than or equal.
    #[serde(rename = "$gte", default)]
    gte: Bound,
    /// Less than.
    #[serde(rename = "$lt", default)]
    lt: Bound,
    /// Less than or equal.
    #[serde(rename = "$lte", default)]
    lte: Bound,
    /// `true`: the key is present (whatever its value); `false`: it is absent.
    #[serde(rename = "$exists", default)]
    exists: bool,
    /// Field operators that must not match: `{"$not": {"$gt": 3}}` matches 3 or less,
    /// anything that is not a number, and a missing key.
    #[serde(rename = "$not", default)]
    #[schema(value_type = Object)]
    not: BTreeMap<String, Condition>,
}

/// A `$gt`/`$gte`/`$lt`/`$lte` operand: a number (compares with numbers) or a string
/// (with strings, by Unicode code points; an RFC 3339 date-time such as
/// `2024-05-01T12:00:00+02:00` compares as an instant with metadata strings that are
/// date-times). Booleans have no order.
#[derive(ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum Bound {
    Number(f64),
    String(String),
}

/// The collection named in the path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct CollectionParam {
    /// 1-64 of `A-Z a-z 0-9 _ . -`, not starting with `.`.
    collection: String,
}

/// The collection and document named in the path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct DocumentParams {
    collection: String,
    /// The document id (1-512 bytes).
    id: String,
}

/// What an operation on a named collection answers when the key may not use it or it
/// does not exist.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum CollectionErrors {
    /// The key lacks the role this operation needs on the collection.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// No such collection.
    #[response(status = 404)]
    NotFound(ErrorBody),
}

/// Multipart ingestion: each part with a file name (`.md`, `.markdown`, `.txt`, `.rst`)
/// becomes one document, its id the file name.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct UploadForm {
    #[schema(content_media_type = "text/plain")]
    file: String,
}

const DESCRIPTION: &str = "Semantic search over collections of chunked, embedded documents. \
Authenticate with `Authorization: Bearer KEY` or `X-API-Key: KEY`. Every error is \
`{\"error\": {\"code\", \"message\"}}`.";

#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "kb-worker API", version = "v1", description = DESCRIPTION),
    security(("bearer" = []), ("apiKey" = [])),
    components(schemas(ErrorBody))
)]
struct ApiDoc;

/// What every operation shares: the security schemes and the error answer for any status
/// an operation does not list.
struct Common;

impl Modify for Common {
    fn modify(&self, doc: &mut OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "apiKey",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
        let error = ResponseBuilder::new()
            .description("error")
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name(ErrorBody::name())))
                    .build(),
            )
            .build();
        components.responses.insert("Error".into(), error.into());
        for item in doc.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in operations.into_iter().flatten() {
                op.responses
                    .responses
                    .entry("default".into())
                    .or_insert_with(|| RefOr::Ref(Ref::from_response_name("Error")));
            }
        }
    }
}

/// The document's base (info, security, shared schemas); the router adds the paths.
pub fn base() -> OpenApi {
    <ApiDoc as utoipa::OpenApi>::openapi()
}

/// The whole document as JSON, built once.
pub fn document() -> &'static str {
    static DOC: LazyLock<String> = LazyLock::new(|| {
        let mut doc = super::api_routes().into_openapi();
        Common.modify(&mut doc);
        serde_json::to_string_pretty(&doc).expect("the OpenAPI document serialises")
    });
    &DOC
}

/// This document: the OpenAPI 3.1 description of the API.
#[utoipa::path(get, path = "/openapi.json", operation_id = "getOpenapi", security(()), tag = "meta",
    responses((status = 200, description = "this document", content_type = "application/json")))]
pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], document()).into_response()
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    /// The schema's filter operators are the ones the engine takes, and its limits the
    /// engine's.
    #[test]
    fn the_filter_schema_names_every_operator_the_engine_takes() {
        use crate::index::filter::{Filter, MAX_IN_VALUES};
        let doc: Value = serde_json::from_str(super::document()).unwrap();
        let schemas = &doc["components"]["schemas"];
        let ops = schemas["FieldOperators"]["properties"].as_object().unwrap();
        let mut names: Vec<&str> = ops.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["$eq", "$exists", "$gt", "$gte", "$in", "$lt", "$lte", "$ne", "$nin", "$not"]
        );
        for name in names {
            let operand = match name {
                "$in" | "$nin" => json!([1]),
                "$exists" => json!(true),
                "$not" => json!({"$eq": 1}),
                _ => json!(1),
            };
            assert!(
                Filter::parse(&json!({"k": {name: operand}})).is_ok(),
                "{name}"
            );
        }
        assert_eq!(ops["$in"]["maxItems"], json!(MAX_IN_VALUES));
        assert!(schemas["FieldOperators"]["required"].is_null());
        let description = schemas["Filter"]["description"].as_str().unwrap();
        for limit in [
            crate::index::filter::MAX_KEYS,
            crate::index::filter::MAX_DEPTH,
            crate::index::filter::MAX_CLAUSES,
            MAX_IN_VALUES,
        ] {
            assert!(description.contains(&limit.to_string()), "{limit}");
        }
    }
}
