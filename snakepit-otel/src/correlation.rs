//! `CorrelationLayer`: every request carries a correlation id — the caller's, or a new
//! one. Later layers put it on the span and in log lines, the pool puts it on events and
//! sends it to Python in the call's metadata.

use std::task::{Context, Poll};

use snakepit_core::Request;
use tower::{Layer, Service};

use crate::config::CorrelationConfig;

/// Longest correlation id kept; longer ones are cut (they travel in headers and logs).
const MAX_LEN: usize = 128;

/// Makes sure every request has a correlation id (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct CorrelationLayer {
    generate: bool,
}

impl CorrelationLayer {
    /// A layer that generates missing ids when `cfg` says so.
    pub fn new(cfg: &CorrelationConfig) -> Self {
        CorrelationLayer {
            generate: cfg.generate_if_missing,
        }
    }
}

impl CorrelationLayer {
    /// Clean `req`'s correlation id, or give it one (when so configured).
    pub fn apply(&self, req: &mut Request) {
        apply(self.generate, req);
    }
}

fn apply(generate: bool, req: &mut Request) {
    req.correlation_id = match req.correlation_id.as_deref().and_then(clean_correlation_id) {
        Some(id) => Some(id),
        None if generate => Some(new_correlation_id()),
        None => None,
    };
}

impl Default for CorrelationLayer {
    fn default() -> Self {
        CorrelationLayer::new(&CorrelationConfig::default())
    }
}

impl<S> Layer<S> for CorrelationLayer {
    type Service = Correlation<S>;
    fn layer(&self, inner: S) -> Correlation<S> {
        Correlation {
            inner,
            generate: self.generate,
        }
    }
}

/// The service [`CorrelationLayer`] makes.
#[derive(Debug, Clone)]
pub struct Correlation<S> {
    inner: S,
    generate: bool,
}

/// A usable correlation id: printable ASCII (it travels as a header), bounded length.
pub fn clean_correlation_id(raw: &str) -> Option<String> {
    let cleaned: String = raw
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(MAX_LEN)
        .collect();
    (!cleaned.is_empty()).then_some(cleaned)
}

/// A fresh correlation id (a random UUID).
pub fn new_correlation_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl<S: Service<Request>> Service<Request> for Correlation<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        apply(self.generate, &mut req);
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::ServiceExt;

    #[tokio::test]
    async fn keeps_cleans_or_generates() {
        let echo =
            tower::service_fn(|r: Request| async move { Ok::<_, Infallible>(r.correlation_id) });
        let svc = CorrelationLayer::default().layer(echo);
        let kept = svc
            .clone()
            .oneshot(Request::new("x", serde_json::json!({})).correlation_id("abc-1"))
            .await
            .unwrap();
        assert_eq!(kept.as_deref(), Some("abc-1"));
        let cleaned = svc
            .clone()
            .oneshot(Request::new("x", serde_json::json!({})).correlation_id("a b\nc"))
            .await
            .unwrap();
        assert_eq!(cleaned.as_deref(), Some("abc"));
        let generated = svc
            .clone()
            .oneshot(Request::new("x", serde_json::json!({})))
            .await
            .unwrap();
        assert_eq!(generated.map(|g| g.len()), Some(36));
        let off = CorrelationLayer::new(&CorrelationConfig {
            generate_if_missing: false,
            ..Default::default()
        })
        .layer(echo);
        assert_eq!(
            off.oneshot(Request::new("x", serde_json::json!({})))
                .await
                .unwrap(),
            None
        );
    }
}
