//! The HTTP execute API (SPEC §6), as an axum `Router` over [`Pools`] wrapped in the
//! telemetry layers.
//!
//! | request | success | errors |
//! | --- | --- | --- |
//! | `POST /v1/execute` `{"command", "args"?, "session_id"?, "timeout_ms"?, "pool"?}` | 200 `{"result", "request_id", "worker_id", "duration_ms"}` | see below |
//! | `POST /v1/execute/stream` (same body) | 200, NDJSON: `{"chunk": …}` lines, then `{"done": true, …}` or `{"error": …}` | |
//! | `POST /v1/pools/{pool}/commands/{command}?session_id=&timeout_ms=`, body = the args object (empty: `{}`) | as `/v1/execute`, or as `/v1/execute/stream` for a streaming command | as those |
//! | `GET /v1/commands` | 200 `{"pools": {name: {"commands": [{"name", "streaming", "async", "doc", "params", "args_schema", "returns_schema"}, …] or null}}}` (null: the pool's workers have not described their commands yet) | 503 |
//! | `GET /openapi.json` | 200 an OpenAPI 3.1 document: the routes above, one operation per pool and command | 503 |
//! | `POST /v1/sessions` `{"pool"?, "ttl_seconds"?, "metadata"?, "session_id"?}` | 201 `{"session_id", "pool", "ttl_seconds"}` | |
//! | `DELETE /v1/sessions/{id}?pool=` | 204 | 404 |
//!
//! Errors are `{"error": {"type", "message", "python_type"?, "python_traceback"?,
//! "python_stack"?, "request_id"}}` (`python_stack`: on a timeout or an unhealthy worker, where the worker's
//! Python threads were when it was replaced, or where a cancelled coroutine was awaiting): 400 malformed JSON, a field of the wrong type or missing, arguments
//! that do not fit; 404 unknown command, pool or session; 413 body over
//! `max_payload_bytes`; 422 the Python code raised; 429 queue full (`Retry-After`); 502
//! worker crashed or stopped answering health checks; 503 shutting down or not ready; 504 timeout or queue timeout.
//! `x-correlation-id` (configurable) is read and echoed.
//!
//! Modules: `errors.rs` (errors as responses), `catalog.rs` (`/v1/commands` and the
//! per-command route), `openapi.rs` (the document) and `schemas.rs` (the commands'
//! named types into `components/schemas`).

mod catalog;
mod errors;
mod openapi;
mod schemas;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use snakepit_core::{Args, Error, Pools, Request, ResponseStream, SessionOptions};

use errors::{bad_request, body_error, not_accepting, pool_error};
use tower::util::BoxCloneSyncService;
use tower::ServiceExt;

/// The layered services the API calls.
pub type UnaryService = BoxCloneSyncService<Request, snakepit_core::Response, Error>;
/// Streaming calls behind the telemetry layer, as the API serves them.
pub type StreamService = BoxCloneSyncService<Request, ResponseStream, Error>;

/// The pools and the layered services calling them; set once the pools are up.
#[derive(Clone)]
pub struct Backend {
    /// The pools themselves (sessions, stats).
    pub pools: Pools,
    /// Unary calls, through the telemetry layer.
    pub unary: UnaryService,
    /// Streaming calls, through the telemetry layer.
    pub stream: StreamService,
}

/// What the execute API's handlers share: the backend once the pools are up, the
/// header correlation ids travel in, and whether requests are admitted.
#[derive(Clone)]
pub struct ApiState {
    /// Set once the pools have started; until then the API answers 503.
    pub backend: Arc<OnceLock<Backend>>,
    /// The request and response header carrying the correlation id.
    pub correlation_header: HeaderName,
    /// False until the pools are up, and again while draining: requests get 503.
    pub accepting: Arc<AtomicBool>,
}

impl ApiState {
    /// The backend if requests are being accepted.
    pub(crate) fn live(&self) -> Option<&Backend> {
        if self.accepting.load(Ordering::Acquire) {
            self.backend.get()
        } else {
            None
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecuteBody<'a> {
    command: String,
    #[serde(borrow)]
    args: Option<&'a RawValue>,
    session_id: Option<String>,
    timeout_ms: Option<u64>,
    pool: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionBody {
    pool: Option<String>,
    ttl_seconds: Option<u64>,
    metadata: Option<serde_json::Value>,
    session_id: Option<String>,
    on_worker_loss: Option<snakepit_core::OnWorkerLoss>,
}

#[derive(Deserialize)]
struct PoolQuery {
    pool: Option<String>,
}

/// Turn a body into a pool request, the correlation id read (or made) for echoing.
fn to_request(
    state: &ApiState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(Request, String), Box<Response>> {
    let parsed: ExecuteBody = serde_json::from_slice(body)
        .map_err(|e| Box::new(bad_request(format!("malformed request: {e}"))))?;
    if parsed.command.is_empty() {
        return Err(Box::new(bad_request("`command` must not be empty".into())));
    }
    let timeout = check_timeout(parsed.timeout_ms)?;
    let args = match parsed.args {
        Some(raw) => Args::from_json_bytes(Bytes::copy_from_slice(raw.get().as_bytes())),
        None => Args::empty(),
    };
    let mut req = Request::new(parsed.command, args);
    req.session_id = parsed.session_id;
    req.pool = parsed.pool;
    req.timeout = timeout;
    Ok(identify(state, headers, req))
}

/// `timeout_ms` as a deadline, refused (400) outside 1..=MAX_REQUEST_TIMEOUT.
pub(crate) fn check_timeout(timeout_ms: Option<u64>) -> Result<Option<Duration>, Box<Response>> {
    let max_timeout = snakepit_core::pool::MAX_REQUEST_TIMEOUT.as_millis() as u64;
    if timeout_ms.is_some_and(|t| t == 0 || t > max_timeout) {
        return Err(Box::new(bad_request(format!(
            "`timeout_ms` must be an integer from 1 to {max_timeout}"
        ))));
    }
    Ok(timeout_ms.map(Duration::from_millis))
}

/// Give `req` a new request id and the caller's correlation id (read from the
/// configured header, else made), which comes back for echoing.
pub(crate) fn identify(state: &ApiState, headers: &HeaderMap, req: Request) -> (Request, String) {
    let correlation = headers
        .get(&state.correlation_header)
        .and_then(|v| v.to_str().ok())
        .and_then(snakepit_otel::correlation::clean_correlation_id)
        .unwrap_or_else(snakepit_otel::correlation::new_correlation_id);
    let mut req = req.correlation_id(correlation.clone());
    req.request_id = Some(uuid::Uuid::new_v4().to_string());
    (req, correlation)
}

fn with_correlation(mut resp: Response, state: &ApiState, correlation: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(correlation) {
        resp.headers_mut()
            .insert(state.correlation_header.clone(), v);
    }
    resp
}

async fn execute(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some(backend) = state.live() else {
        return not_accepting();
    };
    let body = match body {
        Ok(b) => b,
        Err(r) => return body_error(r),
    };
    match to_request(&state, &headers, &body) {
        Ok((req, correlation)) => unary(&state, backend, req, &correlation).await,
        Err(resp) => *resp,
    }
}

/// Run a unary request and answer it: 200 `{"request_id", "worker_id", "duration_ms",
/// "session"?, "result"}`, or the error with its status; the correlation id echoed.
pub(crate) async fn unary(
    state: &ApiState,
    backend: &Backend,
    req: Request,
    correlation: &str,
) -> Response {
    let request_id = req.request_id.clone().unwrap_or_default();
    let resp = match backend.unary.clone().oneshot(req).await {
        Ok(r) => {
            let session = match &r.served.session_recreated {
                // The session's state was lost with its worker and re-created empty.
                Some(reason) => format!(
                    r#""session":{{"recreated":true,"reason":{}}},"#,
                    json!(reason)
                ),
                None => String::new(),
            };
            let head = format!(
                r#"{{"request_id":{},"worker_id":{},"duration_ms":{},{session}"result":"#,
                json!(r.served.request_id),
                json!(r.served.worker_id),
                r.served.duration.as_secs_f64() * 1000.0
            );
            // The result goes out as the exact JSON Python produced, never re-encoded.
            let mut out = Vec::with_capacity(head.len() + r.result.len() + 1);
            out.extend_from_slice(head.as_bytes());
            out.extend_from_slice(&r.result);
            out.push(b'}');
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                out,
            )
                .into_response()
        }
        Err(e) => pool_error(&e, &request_id),
    };
    with_correlation(resp, state, correlation)
}

async fn execute_stream(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some(backend) = state.live() else {
        return not_accepting();
    };
    let body = match body {
        Ok(b) => b,
        Err(r) => return body_error(r),
    };
    match to_request(&state, &headers, &body) {
        Ok((req, correlation)) => stream(&state, backend, req, &correlation).await,
        Err(resp) => *resp,
    }
}

/// Run a streaming request and answer it: 200 NDJSON, or the error with its status
/// (before the first chunk); the correlation id echoed.
pub(crate) async fn stream(
    state: &ApiState,
    backend: &Backend,
    req: Request,
    correlation: &str,
) -> Response {
    let request_id = req.request_id.clone().unwrap_or_default();
    let resp = match backend.stream.clone().oneshot(req).await {
        Ok(chunks) => {
            let lines = ndjson(chunks, request_id.clone());
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/x-ndjson")],
                Body::from_stream(lines),
            )
                .into_response()
        }
        Err(e) => pool_error(&e, &request_id),
    };
    with_correlation(resp, state, correlation)
}

/// The NDJSON body of a stream: one `{"chunk": …}` line per chunk, then exactly one
/// terminal line — `{"done": true, …}` after a clean end, or the `{"error": …}` line.
fn ndjson(
    chunks: ResponseStream,
    request_id: String,
) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send {
    futures_util::stream::unfold(Some(chunks), move |state| {
        let request_id = request_id.clone();
        async move {
            let mut chunks = state?;
            let line = match chunks.next().await {
                Some(Ok(chunk)) => {
                    let mut line = Vec::with_capacity(chunk.data.len() + 12);
                    line.extend_from_slice(b"{\"chunk\":");
                    line.extend_from_slice(&chunk.data);
                    line.extend_from_slice(b"}\n");
                    return Some((Ok(Bytes::from(line)), Some(chunks)));
                }
                Some(Err(e)) => {
                    let py = e.python();
                    json!({"error": {"type": e.error_type(), "message": e.to_string(),
                        "python_type": py.map(|p| &p.python_type),
                        "python_traceback": py.map(|p| &p.traceback),
                        "python_stack": e.python_stack(), "request_id": request_id}})
                }
                None => json!({"done": true, "request_id": request_id}),
            };
            // Terminal line: the stream is finished (and dropped) after it.
            Some((Ok(Bytes::from(format!("{line}\n"))), None))
        }
    })
}

async fn create_session(
    State(state): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some(backend) = state.live() else {
        return not_accepting();
    };
    let body = match body {
        Ok(b) if b.is_empty() => Bytes::from_static(b"{}"),
        Ok(b) => b,
        Err(r) => return body_error(r),
    };
    let parsed: SessionBody = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return bad_request(format!("malformed request: {e}")),
    };
    let mut probe = Request::new("", Args::empty());
    probe.pool = parsed.pool.clone();
    let pool = match backend.pools.route(&probe) {
        Ok(p) => p,
        Err(e) => return pool_error(&e, ""),
    };
    let opts = SessionOptions {
        ttl: parsed.ttl_seconds.map(Duration::from_secs),
        metadata: parsed.metadata.unwrap_or(serde_json::Value::Null),
        id: parsed.session_id,
        on_worker_loss: parsed.on_worker_loss,
    };
    match pool.create_session(opts) {
        Ok(info) => (
            StatusCode::CREATED,
            [(header::CONTENT_TYPE, "application/json")],
            json!({"session_id": info.id, "pool": pool.name(), "ttl_seconds": info.ttl.as_secs(),
                "on_worker_loss": info.on_worker_loss})
            .to_string(),
        )
            .into_response(),
        Err(e) => pool_error(&e, ""),
    }
}

async fn close_session(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<PoolQuery>,
) -> Response {
    let Some(backend) = state.live() else {
        return not_accepting();
    };
    let mut probe = Request::new("", Args::empty());
    probe.pool = q.pool;
    let pool = match backend.pools.route(&probe) {
        Ok(p) => p,
        Err(e) => return pool_error(&e, ""),
    };
    match pool.close_session(&id).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => pool_error(&e, ""),
    }
}

/// The execute API routes.
pub fn router(state: ApiState, max_payload_bytes: usize) -> Router {
    Router::new()
        .route("/v1/execute", post(execute))
        .route("/v1/execute/stream", post(execute_stream))
        .route("/v1/sessions", post(create_session))
        .route("/v1/sessions/{id}", delete(close_session))
        .route("/v1/commands", get(catalog::list))
        .route("/v1/pools/{pool}/commands/{command}", post(catalog::call))
        .route("/openapi.json", get(openapi::document))
        // The body limit applies to the JSON envelope; the pool checks args again.
        .layer(DefaultBodyLimit::max(
            max_payload_bytes.saturating_add(64 * 1024),
        ))
        .with_state(state)
}
