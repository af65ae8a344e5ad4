//! `GET /openapi.json`: the OpenAPI 3.1 description of every route, generated from the
//! handlers' own `#[utoipa::path]` attributes and the types they read and answer
//! (`ToSchema` derived beside each type), so the description cannot drift from the code.
//! What the derives cannot see is added here, once for all the routes it concerns, from
//! the code's own rules: the rate-limit headers of limited routes, the access errors of
//! guarded ones, the errors of a JSON body, the bounds of a config's numbers, and that
//! input objects refuse unknown fields.

use super::{admin, dashboard, decision, demo, middleware, ops, realtime};
use crate::config::{ConfigSpec, MAX_ENDPOINT_BYTES, MAX_REQUESTS_PER_WINDOW, MAX_WINDOW_SECONDS};
use crate::error::{ErrorBody, Refusal};
use crate::limiter::MAX_LIMITS;
use actix_web::HttpResponse;
use std::borrow::Cow;
use utoipa::openapi::path::{Operation, Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{AdditionalProperties, Object, ObjectBuilder, Schema, Type};
use utoipa::openapi::{
    ContentBuilder, HeaderBuilder, OpenApi as Document, RefOr, Required, ResponseBuilder,
};
use utoipa::{IntoParams, Modify, OpenApi, PartialSchema, ToSchema};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ratewarden",
        description = "A rate-limiting server: protected demo routes, the admin API, the decision API, live feeds and the dashboard. Limited routes answer 429 with the rate-limit headers; /admin, /v1, /ws, /events, /dashboard, /static, /metrics, /health, /livez, /readyz and /openapi.json are never limited. The admin API, /metrics and the feeds take the admin token (Authorization: Bearer) when one is set, else loopback callers addressing a loopback host name (or one of --allowed-hosts) only; /v1 also takes the decision token."
    ),
    paths(
        demo::index,
        demo::data,
        demo::submit,
        ops::health,
        ops::livez,
        ops::readyz,
        ops::metrics,
        admin::list_configs,
        admin::create_config,
        admin::config_history,
        admin::get_config,
        admin::update_config,
        admin::delete_config,
        admin::rollback,
        admin::reload,
        admin::global_stats,
        admin::traffic,
        admin::client_stats,
        admin::top,
        admin::reset_client,
        decision::check,
        decision::release,
        decision::report,
        decision::forward_auth,
        decision::envoy_json,
        realtime::websocket,
        realtime::events,
        dashboard::page,
        dashboard::asset,
        openapi_json,
    ),
    components(schemas(ErrorBody, Refusal)),
    modifiers(&Rules),
    tags(
        (name = "demo", description = "Protected demo routes (rate limited)"),
        (name = "configs", description = "Configs, their history and rollback, the config file"),
        (name = "stats", description = "Statistics, top clients, resets"),
        (name = "decisions", description = "The decision API for other services"),
        (name = "feeds", description = "Live feeds (WebSocket, Server-Sent Events)"),
        (name = "operations", description = "Health, metrics, the dashboard, this document"),
    )
)]
pub struct ApiDoc;

/// `GET /openapi.json`.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "This document", body = Object, content_type = "application/json"))
)]
pub async fn openapi_json() -> HttpResponse {
    // Built from static attributes, so the same every time: built once. (It always
    // serialises: it holds nothing but strings, numbers and maps.)
    static JSON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let json = JSON.get_or_init(|| ApiDoc::openapi().to_json().unwrap_or_default());
    HttpResponse::Ok()
        .content_type("application/json")
        .body(json.as_str())
}

/// The `{endpoint}` of `/admin/configs/{endpoint}`.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // describes the path; `admin::decode_endpoint` reads it
pub struct Endpoint {
    /// The config's endpoint without its leading `/` (`api/*` names `/api/*`), `*` for
    /// the default; percent-encoding is decoded once (`api%2Fdata` names `/api/data`).
    endpoint: String,
}

/// The body of `POST /admin/configs`: a config's fields, nothing else. None is marked
/// required, for a schema cannot say "one or the other" to a fuzzer without also calling
/// valid configs invalid: `endpoint` is required of a path config, where a descriptor
/// rule names `domain` and `descriptor`; and `requests_per_window` and `window_seconds`
/// of a config of one limit, where a config of several names `limits`.
pub struct ConfigCreate;

impl PartialSchema for ConfigCreate {
    fn schema() -> RefOr<Schema> {
        let mut schema = closed(ConfigSpec::schema(), true);
        if let RefOr::T(Schema::Object(object)) = &mut schema {
            object.required.retain(|f| f != "endpoint");
        }
        schema
    }
}

impl ToSchema for ConfigCreate {}

/// The body of `PUT /admin/configs/{endpoint}`: any of a config's fields, nothing else.
pub struct ConfigPatch;

impl PartialSchema for ConfigPatch {
    fn schema() -> RefOr<Schema> {
        closed(ConfigSpec::schema(), false)
    }
}

impl ToSchema for ConfigPatch {}

/// `schema`, refusing unknown properties; `required` kept or dropped.
fn closed(schema: RefOr<Schema>, required: bool) -> RefOr<Schema> {
    let mut schema = schema;
    if let RefOr::T(Schema::Object(object)) = &mut schema {
        object.additional_properties = Some(Box::new(AdditionalProperties::FreeForm(false)));
        if !required {
            object.required.clear();
        }
    }
    schema
}

/// What the derives cannot see, from the code's own rules.
struct Rules;

impl Modify for Rules {
    fn modify(&self, doc: &mut Document) {
        for (path, item) in doc.paths.paths.iter_mut() {
            let limited = !middleware::is_exempt(path);
            let guarded = ["/admin", "/metrics", "/ws", "/events", "/v1"]
                .iter()
                .any(|p| path.starts_with(p));
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
                &mut item.head,
                &mut item.options,
            ];
            for op in operations.into_iter().flatten() {
                if limited {
                    limited_route(op);
                }
                if limited || path.starts_with("/admin") || path.starts_with("/v1") {
                    respond(
                        op,
                        "503",
                        "The database, the limiter or Redis did not answer in time (limited routes: with --on-error deny); nothing changed",
                    );
                }
                if guarded {
                    respond(op, "401", "The admin (or decision) token is required");
                    respond(
                        op,
                        "403",
                        "Without a token: a peer that is not loopback, or a Host that is not a loopback name nor in --allowed-hosts (forbidden_host); or a page of another origin",
                    );
                }
                if op.request_body.is_some() {
                    respond(op, "400", "The body is not JSON, or not an object");
                    respond(op, "413", "The body is too large");
                    respond(op, "415", "The body is not application/json");
                }
            }
        }
        // The files there are, from the table that serves them.
        if let Some(op) = doc
            .paths
            .paths
            .get_mut("/static/{file}")
            .and_then(|i| i.get.as_mut())
            && let Some(file) = op
                .parameters
                .iter_mut()
                .flatten()
                .find(|p| p.name == "file")
        {
            file.schema = Some(RefOr::T(Schema::Object(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    // The vendored files sit under a folder: a fuzzer would send their
                    // `/` encoded, which names no file. The top-level ones are listed.
                    .enum_values(Some(dashboard::asset_names().filter(|n| !n.contains('/'))))
                    .build(),
            )));
        }
        let Some(components) = doc.components.as_mut() else {
            return;
        };
        for schema in components.schemas.values_mut() {
            let RefOr::T(Schema::Object(object)) = schema else {
                continue;
            };
            bound_config_numbers(object);
            if let Some(RefOr::T(Schema::Array(limits))) = object.properties.get_mut("limits") {
                limits.min_items = Some(1);
                limits.max_items = Some(MAX_LIMITS);
            }
            if let Some(RefOr::T(Schema::Array(overrides))) = object.properties.get_mut("overrides")
                && let utoipa::openapi::schema::ArrayItems::RefOrSchema(item) = &mut overrides.items
                && let RefOr::T(Schema::Object(o)) = item.as_mut()
            {
                bound_config_numbers(o);
            }
        }
    }
}

/// The bounds `ConfigSpec::validate` enforces, on any schema with a config's numbers.
fn bound_config_numbers(object: &mut Object) {
    // A limit (one with a `unit`) may count tokens or bytes, up to `MAX_UNITS`.
    let quota = match object.properties.contains_key("unit") {
        true => crate::config::MAX_UNITS,
        false => MAX_REQUESTS_PER_WINDOW,
    };
    for (field, max) in [
        ("requests_per_window", quota),
        ("window_seconds", MAX_WINDOW_SECONDS),
        ("burst_limit", quota),
    ] {
        if let Some(RefOr::T(Schema::Object(p))) = object.properties.get_mut(field) {
            p.minimum = Some(1u64.into());
            p.maximum = Some(max.into());
        }
    }
    if object.properties.contains_key("requests_per_window")
        && let Some(RefOr::T(Schema::Object(p))) = object.properties.get_mut("endpoint")
    {
        p.min_length = Some(1);
        p.max_length = Some(MAX_ENDPOINT_BYTES);
    }
}

/// A limited route: who the client is, its refusal, and the rate-limit headers on its
/// answers.
fn limited_route(op: &mut Operation) {
    respond_with(op, "429", "Over the limit", Refusal::name());
    let client = ParameterBuilder::new()
        .name("X-Client-ID")
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(
            "The client (1 to 128 of A-Z a-z 0-9 . _ : @ -); else its address",
        ))
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[A-Za-z0-9._:@-]{1,128}$")),
        ))
        .build();
    op.parameters
        .get_or_insert_with(Vec::<Parameter>::new)
        .push(client);
    for (status, response) in op.responses.responses.iter_mut() {
        let RefOr::T(response) = response else {
            continue;
        };
        if status != "200" && status != "429" {
            continue;
        }
        for (name, what) in [
            ("X-RateLimit-Limit", "The limit of the config that applied"),
            ("X-RateLimit-Remaining", "Requests left"),
            (
                "X-RateLimit-Reset",
                "Unix seconds at which the quota is fully restored",
            ),
        ] {
            let header = HeaderBuilder::new()
                .schema(
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(0u64)),
                )
                .description(Some(what))
                .build();
            response.headers.insert(name.to_owned(), header);
        }
        for (name, what) in [
            (
                "RateLimit-Policy",
                "\"<config>\";q=<limit>;w=<window seconds>",
            ),
            ("RateLimit", "\"<config>\";r=<remaining>;t=<seconds>"),
        ] {
            let header = HeaderBuilder::new()
                .schema(ObjectBuilder::new().schema_type(Type::String))
                .description(Some(what))
                .build();
            response.headers.insert(name.to_owned(), header);
        }
    }
    respond(
        op,
        "400",
        "A bad X-Client-ID, or a path with . or .. segments",
    );
}

/// Adds an error response (`ErrorBody`) unless the operation documents that status.
fn respond(op: &mut Operation, status: &str, description: &str) {
    respond_with(op, status, description, ErrorBody::name());
}

/// Adds a response with the body `schema` unless the operation documents that status.
fn respond_with(op: &mut Operation, status: &str, description: &str, schema: Cow<'static, str>) {
    if op.responses.responses.contains_key(status) {
        return;
    }
    let body = ContentBuilder::new()
        .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
            schema,
        ))))
        .build();
    let response = ResponseBuilder::new()
        .description(description)
        .content("application/json", body)
        .build();
    op.responses
        .responses
        .insert(status.to_owned(), RefOr::T(response));
}
