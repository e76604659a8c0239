//! The described commands over HTTP: `GET /v1/commands` lists every pool's commands
//! (what they take and return, from the adapters' type hints), and
//! `POST /v1/pools/{pool}/commands/{command}` calls one with the body as its
//! arguments — answered exactly as `/v1/execute` (unary) or `/v1/execute/stream`
//! (a streaming command) answer, by the same code.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use snakepit_core::{Args, CommandSpec, Pool, Request};

use super::errors::{bad_request, body_error, not_accepting};
use super::{check_timeout, identify, stream, unary, ApiState, Backend};

/// The options of a per-command call, as query parameters.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CallQuery {
    session_id: Option<String>,
    timeout_ms: Option<u64>,
}

/// `{"pools": {name: {"commands": [spec, …] | null}}}`: `null` for a pool none of
/// whose workers has described its commands yet.
pub(super) fn catalog(backend: &Backend) -> Value {
    let pools: Map<String, Value> = backend
        .pools
        .iter()
        .map(|pool| {
            let commands = pool
                .command_specs()
                .map_or(Value::Null, |specs| json!(specs));
            (pool.name().to_string(), json!({ "commands": commands }))
        })
        .collect();
    json!({ "pools": pools })
}

/// `GET /v1/commands`.
pub(super) async fn list(State(state): State<ApiState>) -> Response {
    let Some(backend) = state.live() else {
        return not_accepting();
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        catalog(backend).to_string(),
    )
        .into_response()
}

/// The spec of `command` in `pool`, if its workers described it.
pub(super) fn spec<'a>(pool: &'a Pool, command: &str) -> Option<&'a CommandSpec> {
    let specs = pool.command_specs()?;
    specs
        .binary_search_by(|s| s.name.as_str().cmp(command))
        .ok()
        .map(|i| &specs[i])
}

/// `POST /v1/pools/{pool}/commands/{command}`: the body is the arguments object
/// (empty: none); `session_id` and `timeout_ms` come as query parameters. An unknown
/// pool or command is the 404 `/v1/execute` gives.
pub(super) async fn call(
    State(state): State<ApiState>,
    Path((pool, command)): Path<(String, String)>,
    query: Result<Query<CallQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some(backend) = state.live() else {
        return not_accepting();
    };
    let Query(query) = match query {
        Ok(q) => q,
        Err(e) => return bad_request(format!("malformed query: {}", e.body_text())),
    };
    let body = match body {
        Ok(b) => b,
        Err(r) => return body_error(r),
    };
    let timeout = match check_timeout(query.timeout_ms) {
        Ok(t) => t,
        Err(resp) => return *resp,
    };
    let args = if body.iter().all(u8::is_ascii_whitespace) {
        Args::empty()
    } else {
        Args::from_json_bytes(body)
    };
    let streaming = backend
        .pools
        .get(&pool)
        .and_then(|p| spec(p, &command))
        .is_some_and(|s| s.streaming);
    let mut req = Request::new(command, args).pool(pool);
    req.session_id = query.session_id;
    req.timeout = timeout;
    let (req, correlation) = identify(&state, &headers, req);
    if streaming {
        stream(&state, backend, req, &correlation).await
    } else {
        unary(&state, backend, req, &correlation).await
    }
}
