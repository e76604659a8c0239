//! A JSON response with the headers every health endpoint sends (a leaf module: the
//! routes and the stacks endpoint both use it).

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

/// `body` as `content_type` with `status`, never cached.
pub(crate) fn json_response(
    status: StatusCode,
    content_type: &'static str,
    body: &serde_json::Value,
) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body.to_string(),
    )
        .into_response()
}
