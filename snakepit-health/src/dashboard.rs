//! The dashboard: one self-contained page (HTML, CSS and a small hand-written canvas
//! chart library, no CDN, no build step) and its server-sent event stream.

use std::convert::Infallible;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream, StreamExt};
use tokio_stream::wrappers::BroadcastStream;

use crate::Health;

const PAGE: &str = include_str!("../assets/dashboard.html");

pub(crate) async fn page() -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            // Everything the page needs is inline; nothing may load from elsewhere.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:",
            ),
        ],
        PAGE,
    )
        .into_response()
}

pub(crate) async fn snapshot(State(h): State<Health>) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        h.inner.history.snapshot(),
    )
        .into_response()
}

/// `snapshot` first (history and recent errors), then one `update` per tick. A slow
/// page skips missed ticks rather than queueing them.
pub(crate) async fn stream(
    State(h): State<Health>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let history = h.inner.history.clone();
    let updates = BroadcastStream::new(history.updates.subscribe())
        .filter_map(|u| async move { u.ok() })
        .map(|u| Ok(Event::default().event("update").data(&*u)));
    let first =
        stream::once(
            async move { Ok(Event::default().event("snapshot").data(history.snapshot())) },
        );
    Sse::new(first.chain(updates)).keep_alive(KeepAlive::default())
}
