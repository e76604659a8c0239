//! # snakepit
//!
//! Pools of long-lived Python worker processes for Rust services, observable in
//! production. This crate is the `snakepit` binary (`serve`, `exec`, `bench`) and a
//! facade over the others:
//!
//! - the pool itself — [`Pool`], [`Pools`], [`Request`], [`Error`], [`EventBus`] — from
//!   `snakepit-core`, re-exported at the root;
//! - [`otel`]: tower layers, OpenTelemetry providers and exporters, JSON logs;
//! - [`health`]: probes, `/metrics` and the dashboard as an axum router;
//! - [`api`]: the HTTP execute API of `snakepit serve` (with the command catalog,
//!   per-command routes and `/openapi.json`), mountable in your own axum app;
//! - [`config`]: `snakepit.toml` with `SNAKEPIT_*` overrides.
//!
//! [`Snakepit::builder`] wires them in the order they need — telemetry, events, health,
//! pools, readiness — for an application of your own:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use serde_json::json;
//! use snakepit::{PoolConfig, Request, Snakepit};
//! use tower::ServiceExt;
//!
//! let pit = Snakepit::builder().pool(PoolConfig::default()).start().await?;
//! let resp = pit.service().oneshot(Request::new("echo", json!({"x": 1}))).await?;
//! assert_eq!(resp.value()?, json!({"x": 1}));
//! let app = axum::Router::new().merge(pit.router()); // /v1/execute, /health/*, /metrics, /dashboard
//! # let _ = app;
//! pit.shutdown(std::time::Duration::from_secs(30)).await;
//! # Ok(()) }
//! ```
//!
//! `snakepit serve` is the same builder: telemetry → listener (probes answer at once) →
//! pools → traffic; on SIGTERM the reverse (see [`serve`]).

#![warn(missing_docs)]

pub mod api;
pub mod app;
pub mod commands;
pub mod config;
pub mod serve;

pub use app::{Snakepit, SnakepitBuilder, Starting};
pub use snakepit_core::*;

/// Observability: `snakepit-otel`.
pub mod otel {
    pub use snakepit_otel::*;
}

/// Probes, `/metrics`, dashboard: `snakepit-health`.
pub mod health {
    pub use snakepit_health::*;
}
