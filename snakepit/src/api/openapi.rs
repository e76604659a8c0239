//! `GET /openapi.json`: an OpenAPI 3.1 document of the execute API, built from what
//! the pools' workers described — the generic routes, and one operation per pool and
//! command (`POST /v1/pools/{pool}/commands/{command}`, request body = that command's
//! arguments schema, result = its return schema) that a client generator can consume.
//! The commands' named types are hoisted into `components/schemas` (`schemas.rs`).
//! A pool whose workers have not described their commands yet has no operations.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use snakepit_core::CommandSpec;

use super::errors::not_accepting;
use super::schemas::Components;
use super::ApiState;

/// Error statuses every call can answer, and what each means.
const CALL_ERRORS: [(&str, &str); 10] = [
    (
        "400",
        "malformed request, or arguments that do not fit the command",
    ),
    ("404", "unknown pool, command or session"),
    ("410", "the session lost its state with its worker"),
    ("413", "body over max_payload_bytes"),
    ("422", "the Python code raised"),
    ("429", "the pool's queue is full (Retry-After)"),
    (
        "502",
        "the worker crashed or stopped answering health checks",
    ),
    ("503", "starting or shutting down"),
    (
        "504",
        "timeout (the worker replaced, or the coroutine cancelled inside Python) or queue timeout",
    ),
    ("500", "an unexpected failure"),
];

/// `GET /openapi.json`.
pub(super) async fn document(State(state): State<ApiState>) -> Response {
    let Some(backend) = state.live() else {
        return not_accepting();
    };
    let pools = backend.pools.iter().map(|p| (p.name(), p.command_specs()));
    let doc = build(pools, state.correlation_header.as_str());
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        doc.to_string(),
    )
        .into_response()
}

/// The document for `pools` (name, described commands), with the correlation id in
/// `correlation_header`.
pub(super) fn build<'a>(
    pools: impl Iterator<Item = (&'a str, Option<&'a [CommandSpec]>)>,
    correlation_header: &str,
) -> Value {
    let mut components = Components::default();
    for (name, schema) in model() {
        components.define(name, schema);
    }
    let mut paths = generic_paths();
    let mut tags = Vec::new();
    let mut operation_ids = std::collections::BTreeSet::new();
    for (pool, specs) in pools {
        let described = match specs {
            Some(specs) => {
                for spec in specs {
                    let id = unique_id(&mut operation_ids, pool, &spec.name);
                    let path = format!(
                        "/v1/pools/{}/commands/{}",
                        path_segment(pool),
                        path_segment(&spec.name)
                    );
                    let op = command_operation(&mut components, pool, spec, id);
                    paths.insert(path, json!({ "post": op }));
                }
                format!("Commands of pool '{pool}'.")
            }
            None => format!(
                "Commands of pool '{pool}' (its workers have not described them yet: none listed)."
            ),
        };
        tags.push(json!({"name": pool, "description": described}));
    }
    let mut schemas = components.into_map();
    schemas.sort_keys();
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Snakepit",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Python commands served by pools of long-lived worker processes \
                (`snakepit serve`). Each command has its own operation, whose body is its \
                arguments object; the generic `/v1/execute` takes any command by name. \
                Arguments are checked against the command's type hints (400 naming the \
                parameter). Every error answers with the `Error` schema.",
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "tags": tags,
        "paths": paths,
        "components": {
            "schemas": schemas,
            "parameters": parameters(correlation_header),
            "responses": error_responses(),
        },
    })
}

/// `pool__command`, only `[A-Za-z0-9_]`, made unique with a suffix.
fn unique_id(seen: &mut std::collections::BTreeSet<String>, pool: &str, command: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect()
    };
    let base = format!("{}__{}", clean(pool), clean(command));
    let mut id = base.clone();
    let mut k = 1;
    while !seen.insert(id.clone()) {
        k += 1;
        id = format!("{base}_{k}");
    }
    id
}

/// A name as one path segment: unreserved characters kept, the rest percent-encoded
/// (so `{`, `}` and `/` never read as templating or hierarchy).
fn path_segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// References to the error responses: every call's, or only `codes`.
fn errors_refs(codes: Option<&[&str]>) -> Map<String, Value> {
    CALL_ERRORS
        .iter()
        .filter(|(code, _)| codes.is_none_or(|c| c.contains(code)))
        .map(|(code, _)| {
            (
                code.to_string(),
                json!({"$ref": format!("#/components/responses/E{code}")}),
            )
        })
        .collect()
}

fn error_responses() -> Value {
    let map: Map<String, Value> = CALL_ERRORS
        .iter()
        .map(|(code, what)| {
            (
                format!("E{code}"),
                json!({"description": what,
                       "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
            )
        })
        .collect();
    Value::Object(map)
}

fn parameters(correlation_header: &str) -> Value {
    json!({
        "SessionId": {"name": "session_id", "in": "query", "required": false,
            "description": "Run in this session (on the worker holding its state).",
            "schema": {"type": "string"}},
        "TimeoutMs": {"name": "timeout_ms", "in": "query", "required": false,
            "description": "The call's deadline in milliseconds (default: the pool's request_timeout_ms).",
            "schema": {"type": "integer", "minimum": 1, "maximum": 86_400_000}},
        "CorrelationId": {"name": correlation_header, "in": "header", "required": false,
            "description": "Correlation id, echoed in the response (one is generated when absent).",
            "schema": {"type": "string"}},
    })
}

/// One command's operation; its schemas hoisted into `components`.
fn command_operation(
    components: &mut Components,
    pool: &str,
    spec: &CommandSpec,
    operation_id: String,
) -> Value {
    let args = spec
        .args_schema
        .clone()
        .map(|s| without_dialect(components.hoist(s)))
        .unwrap_or_else(|| json!({"type": "object"}));
    let body_required = args
        .get("required")
        .and_then(Value::as_array)
        .is_some_and(|r| !r.is_empty());
    let returns = spec
        .returns_schema
        .clone()
        .map(|s| without_dialect(components.hoist(s)))
        .unwrap_or_else(|| json!({}));
    // The docstring's first paragraph (its lines joined: a sentence may wrap).
    let first_paragraph = spec
        .doc
        .lines()
        .map(str::trim)
        .skip_while(|l| l.is_empty())
        .take_while(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let summary = if first_paragraph.is_empty() {
        format!("{pool}: {}", spec.name)
    } else {
        first_paragraph
    };
    let ok = if spec.streaming {
        json!({"description": "One JSON object per line: a `chunk` line per item the generator yields, \
                then exactly one terminal line, `done` or `error` (if it raised part way).",
               "content": {"application/x-ndjson": {"schema": {"oneOf": [
                   {"type": "object", "required": ["chunk"], "properties": {"chunk": returns}},
                   {"$ref": "#/components/schemas/StreamDone"},
                   {"$ref": "#/components/schemas/Error"}]}}}})
    } else {
        json!({"description": "The command's result.",
               "content": {"application/json": {"schema": {
                   "type": "object",
                   "required": ["result", "request_id", "worker_id", "duration_ms"],
                   "properties": {
                       "result": returns,
                       "request_id": {"type": "string"},
                       "worker_id": {"type": "string"},
                       "duration_ms": {"type": "number"},
                       "session": {"$ref": "#/components/schemas/SessionRecreated"}}}}}})
    };
    let mut responses = errors_refs(None);
    responses.insert("200".into(), ok);
    let mut op = json!({
        "operationId": operation_id,
        "tags": [pool],
        "summary": summary,
        "parameters": [
            {"$ref": "#/components/parameters/SessionId"},
            {"$ref": "#/components/parameters/TimeoutMs"},
            {"$ref": "#/components/parameters/CorrelationId"}],
        "requestBody": {"required": body_required,
            "description": "The command's arguments (an empty body is no arguments).",
            "content": {"application/json": {"schema": args}}},
        "responses": responses,
    });
    if !spec.doc.trim().is_empty() {
        op["description"] = json!(spec.doc);
    }
    if spec.is_async {
        op["x-snakepit-async"] = json!(true);
    }
    op
}

/// A hoisted schema without its own `$schema` (the document states the dialect).
fn without_dialect(mut schema: Value) -> Value {
    if let Some(o) = schema.as_object_mut() {
        o.remove("$schema");
    }
    schema
}

/// Operation of a generic route: JSON body `body` (a component), answered `ok`, or
/// one of the errors (`errors`; none: every call's).
fn generic(
    id: &str,
    summary: &str,
    body: Option<(&str, bool)>,
    ok: (&str, Value),
    errors: Option<&[&str]>,
) -> Value {
    let mut responses = errors_refs(errors);
    responses.insert(ok.0.to_string(), ok.1);
    let mut op = json!({"operationId": id, "summary": summary, "responses": responses,
        "parameters": [{"$ref": "#/components/parameters/CorrelationId"}]});
    if let Some((schema, required)) = body {
        op["requestBody"] = json!({"required": required, "content": {"application/json":
            {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
    }
    op
}

fn json_ok(description: &str, schema: &str) -> Value {
    json!({"description": description, "content": {"application/json":
        {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

fn generic_paths() -> Map<String, Value> {
    let stream_ok = json!({"description": "NDJSON: `chunk` lines, then one `done` or `error` line.",
        "content": {"application/x-ndjson": {"schema": {"oneOf": [
            {"type": "object", "required": ["chunk"], "properties": {"chunk": {}}},
            {"$ref": "#/components/schemas/StreamDone"},
            {"$ref": "#/components/schemas/Error"}]}}}});
    let mut close = generic(
        "close_session",
        "Close a session (its worker drops the session's state).",
        None,
        ("204", json!({"description": "Closed."})),
        Some(&["404", "503", "500"]),
    );
    close["parameters"] = json!([
        {"name": "id", "in": "path", "required": true, "schema": {"type": "string"}},
        {"name": "pool", "in": "query", "required": false, "schema": {"type": "string"}},
        {"$ref": "#/components/parameters/CorrelationId"}]);
    let mut list = generic(
        "list_commands",
        "Every pool's commands: what they take and return.",
        None,
        ("200", json_ok("The catalog.", "Catalog")),
        Some(&["503", "500"]),
    );
    list.as_object_mut().map(|o| o.remove("parameters"));
    let mut paths = Map::new();
    paths.insert(
        "/v1/execute".into(),
        json!({"post": generic("execute",
        "Run any command by name.", Some(("ExecuteRequest", true)),
        ("200", json_ok("The command's result.", "ExecuteResponse")), None)}),
    );
    paths.insert(
        "/v1/execute/stream".into(),
        json!({"post": generic("execute_stream",
        "Run a generator command by name; its items as NDJSON.", Some(("ExecuteRequest", true)),
        ("200", stream_ok), None)}),
    );
    paths.insert(
        "/v1/sessions".into(),
        json!({"post": generic("create_session",
        "Create a session: its requests go to one worker while it lives.",
        Some(("SessionRequest", false)), ("201", json_ok("Created.", "Session")),
        Some(&["400", "404", "503", "500"]))}),
    );
    paths.insert("/v1/sessions/{id}".into(), json!({"delete": close}));
    paths.insert("/v1/commands".into(), json!({"get": list}));
    paths
}

/// The document's own schemas: the envelopes and the error model.
fn model() -> Vec<(&'static str, Value)> {
    let string = json!({"type": "string"});
    vec![
        (
            "Error",
            json!({"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["type", "message"], "properties": {
                "type": {"type": "string", "description": "Stable name: Python, InvalidArgs, Timeout, QueueFull, …"},
                "message": string,
                "python_type": string, "python_traceback": string,
                "python_stack": {"type": "string", "description": "Where the worker's Python was at a timeout."},
                "session_id": string, "reason": string,
                "request_id": {"type": ["string", "null"]}}}}}),
        ),
        (
            "ExecuteRequest",
            json!({"type": "object", "required": ["command"],
            "additionalProperties": false, "properties": {
                "command": {"type": "string", "minLength": 1},
                "args": {"type": "object"},
                "session_id": string,
                "timeout_ms": {"type": "integer", "minimum": 1, "maximum": 86_400_000},
                "pool": string}}),
        ),
        (
            "ExecuteResponse",
            json!({"type": "object",
            "required": ["result", "request_id", "worker_id", "duration_ms"], "properties": {
                "result": {}, "request_id": string, "worker_id": string,
                "duration_ms": {"type": "number"},
                "session": {"$ref": "#/components/schemas/SessionRecreated"}}}),
        ),
        (
            "SessionRecreated",
            json!({"type": "object", "required": ["recreated", "reason"],
            "properties": {"recreated": {"type": "boolean"}, "reason": string}}),
        ),
        (
            "StreamDone",
            json!({"type": "object", "required": ["done"], "properties": {
            "done": {"const": true}, "request_id": string}}),
        ),
        (
            "SessionRequest",
            json!({"type": "object", "additionalProperties": false, "properties": {
            "pool": string, "ttl_seconds": {"type": "integer", "minimum": 0},
            "metadata": {}, "session_id": string,
            "on_worker_loss": {"enum": ["fail", "recreate"]}}}),
        ),
        (
            "Session",
            json!({"type": "object", "properties": {
            "session_id": string, "pool": string, "ttl_seconds": {"type": "integer"},
            "on_worker_loss": {"enum": ["fail", "recreate"]}}}),
        ),
        (
            "Catalog",
            json!({"type": "object", "required": ["pools"], "properties": {"pools": {
            "type": "object", "additionalProperties": {"type": "object", "properties": {"commands": {
                "description": "null until the pool's workers have described their commands",
                "type": ["array", "null"], "items": {"$ref": "#/components/schemas/CommandSpec"}}}}}}}),
        ),
        (
            "CommandSpec",
            json!({"type": "object",
            "required": ["name", "streaming", "async", "doc", "params"], "properties": {
                "name": string, "streaming": {"type": "boolean"}, "async": {"type": "boolean"},
                "doc": string, "params": {"type": "array", "items": string},
                "args_schema": {"type": ["object", "null"]},
                "returns_schema": {"type": ["object", "null"]}}}),
        ),
    ]
}

#[cfg(test)]
#[path = "openapi_tests.rs"]
mod tests;
