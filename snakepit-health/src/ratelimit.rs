//! Per-client token buckets in front of the health endpoints, so a misbehaving scraper
//! or a flood of dashboard reloads cannot turn the probes into load. A refused request
//! gets 429 with `Retry-After`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use snakepit_core::sync;

/// Buckets kept before the least recently used are forgotten.
const MAX_CLIENTS: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// One rate (tokens per second, burst) shared by a class of endpoints.
#[derive(Debug)]
pub struct Limiter {
    per_second: f64,
    burst: f64,
    clients: Mutex<HashMap<Option<IpAddr>, Bucket>>,
}

impl Limiter {
    /// A limiter refilling `per_second` tokens per client, holding at most `burst`.
    pub fn new(per_second: f64, burst: f64) -> Arc<Limiter> {
        Arc::new(Limiter {
            per_second,
            burst: burst.max(1.0),
            clients: Mutex::new(HashMap::new()),
        })
    }

    /// Take a token for `client`; on refusal, the seconds until one is available.
    pub fn take(&self, client: Option<IpAddr>) -> Result<(), u64> {
        let now = Instant::now();
        let mut clients = sync::lock(&self.clients);
        if clients.len() >= MAX_CLIENTS && !clients.contains_key(&client) {
            // Forget the client idle the longest: memory stays bounded under spoofing.
            if let Some(oldest) = clients.iter().min_by_key(|(_, b)| b.at).map(|(k, _)| *k) {
                clients.remove(&oldest);
            }
        }
        let bucket = clients.entry(client).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let refill = now.duration_since(bucket.at).as_secs_f64() * self.per_second;
        bucket.tokens = (bucket.tokens + refill).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / self.per_second;
            Err(wait.ceil().max(1.0) as u64)
        }
    }
}

/// axum middleware: `from_fn_with_state(limiter, rate_limit)`.
pub async fn rate_limit(State(limiter): State<Arc<Limiter>>, req: Request, next: Next) -> Response {
    // Without `into_make_service_with_connect_info` there is no peer address: all
    // clients then share one bucket, which still protects the pool.
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ci| ci.0.ip());
    match limiter.take(client) {
        Ok(()) => next.run(req).await,
        Err(retry_after) => {
            let mut resp = (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::CONTENT_TYPE, "application/json")],
                format!(r#"{{"status":"error","error":"rate limited: retry in {retry_after} s"}}"#),
            )
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&retry_after.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refuse_per_client() {
        let l = Limiter::new(1.0, 3.0);
        let a: Option<IpAddr> = Some([127, 0, 0, 1].into());
        let b: Option<IpAddr> = Some([127, 0, 0, 2].into());
        for _ in 0..3 {
            assert!(l.take(a).is_ok());
        }
        assert_eq!(l.take(a), Err(1));
        assert!(l.take(b).is_ok(), "another client has its own bucket");
    }
}
