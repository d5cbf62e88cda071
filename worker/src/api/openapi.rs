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

/// A metadata filter: every key must match. A plain value is equality (a list-valued
/// field matches when one of its elements is equal); `{"$in": [...]}` is membership.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct Filter(BTreeMap<String, Condition>);

/// One key's condition in a [`Filter`].
#[derive(ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum Condition {
    Equals(Scalar),
    In(InList),
}

/// `{"$in": [values]}`: any of the values.
#[derive(ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct InList {
    #[serde(rename = "$in")]
    values: Vec<Scalar>,
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
