//! The execute API's error answers: a pool [`Error`] (or a refusal before one) as
//! `{"error": {"type", "message", …, "request_id"}}` with its HTTP status.

use axum::extract::rejection::BytesRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use snakepit_core::Error;

/// A JSON error response.
pub(super) fn error_response(
    status: StatusCode,
    kind: &str,
    message: String,
    extra: serde_json::Value,
    request_id: Option<&str>,
) -> Response {
    let mut error = json!({"type": kind, "message": message, "request_id": request_id});
    if let (Some(obj), serde_json::Value::Object(more)) = (error.as_object_mut(), extra) {
        obj.extend(more);
    }
    let mut resp = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"error": error}).to_string(),
    )
        .into_response();
    if status == StatusCode::TOO_MANY_REQUESTS {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

fn status_of(err: &Error) -> StatusCode {
    match err {
        Error::InvalidArgs { .. } => StatusCode::BAD_REQUEST,
        Error::UnknownCommand { .. }
        | Error::UnknownPool { .. }
        | Error::SessionNotFound { .. } => StatusCode::NOT_FOUND,
        Error::SessionLost { .. } => StatusCode::GONE,
        Error::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        Error::Python(_) => StatusCode::UNPROCESSABLE_ENTITY,
        Error::QueueFull { .. } => StatusCode::TOO_MANY_REQUESTS,
        Error::WorkerCrashed { .. } | Error::WorkerUnhealthy { .. } | Error::Transport { .. } => {
            StatusCode::BAD_GATEWAY
        }
        Error::ShuttingDown { .. } => StatusCode::SERVICE_UNAVAILABLE,
        Error::Timeout { .. } | Error::QueueTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

pub(super) fn pool_error(err: &Error, request_id: &str) -> Response {
    let extra = match (err, err.python_stack()) {
        (Error::Python(py), _) => {
            json!({"python_type": py.python_type, "python_traceback": py.traceback})
        }
        (Error::SessionLost { session_id, reason }, _) => {
            json!({"session_id": session_id, "reason": reason})
        }
        // Whichever errors carry the stacks (Error::python_stack says which).
        (_, Some(stack)) => json!({"python_stack": stack}),
        _ => json!({}),
    };
    error_response(
        status_of(err),
        err.error_type(),
        err.to_string(),
        extra,
        Some(request_id),
    )
}

pub(super) fn bad_request(message: String) -> Response {
    error_response(
        StatusCode::BAD_REQUEST,
        "BadRequest",
        message,
        json!({}),
        None,
    )
}

pub(super) fn body_error(rejection: BytesRejection) -> Response {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PayloadTooLarge",
            "request body exceeds server.max_payload_bytes".into(),
            json!({}),
            None,
        )
    } else {
        bad_request(format!("cannot read the request body: {rejection}"))
    }
}

pub(super) fn not_accepting() -> Response {
    error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "NotReady",
        "the server is starting or shutting down; retry shortly".into(),
        json!({}),
        None,
    )
}
