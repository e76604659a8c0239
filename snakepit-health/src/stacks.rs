//! `GET {prefix}/workers/{id}/stacks`: a live dump of a worker's Python stacks, every
//! thread, most recent call first (Python's `faulthandler` format). Behind the
//! detailed endpoints' token and rate limit: it signals a worker process.
//!
//! Plain text by default (read it with `curl`); JSON (`{"worker_id", "pool",
//! "stacks"}`) when the request accepts `application/json`. 404 for a worker no pool
//! has, 504 when the worker did not answer within the wait.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use snakepit_core::StackDumpError;

use crate::checks::HEALTH_JSON;
use crate::respond::json_response;
use crate::Health;

/// The longest the endpoint waits for a dump (a live worker answers in milliseconds).
const WAIT: Duration = Duration::from_secs(1);

pub(crate) async fn worker_stacks(
    State(h): State<Health>,
    Path(worker_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json"));
    for pool in h.pools() {
        match pool.python_stacks(&worker_id, WAIT).await {
            Ok(stacks) if json => {
                let body = serde_json::json!({
                    "worker_id": worker_id, "pool": pool.name(), "stacks": stacks,
                });
                return json_response(StatusCode::OK, HEALTH_JSON, &body);
            }
            Ok(stacks) => {
                return (
                    StatusCode::OK,
                    [
                        (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                        (header::CACHE_CONTROL, "no-store"),
                    ],
                    format!("{stacks}\n"),
                )
                    .into_response()
            }
            Err(StackDumpError::UnknownWorker { .. }) => continue,
            Err(e) => return error(StatusCode::GATEWAY_TIMEOUT, &e.to_string()),
        }
    }
    let message =
        format!("no pool has a worker '{worker_id}' (see /health/detailed for the workers)");
    error(StatusCode::NOT_FOUND, &message)
}

fn error(status: StatusCode, message: &str) -> Response {
    json_response(
        status,
        HEALTH_JSON,
        &serde_json::json!({"error": {"message": message}}),
    )
}
