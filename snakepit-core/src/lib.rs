//! # snakepit-core
//!
//! Pools of long-lived Python worker processes behind a [`tower::Service`].
//!
//! ```no_run
//! use snakepit_core::{EventBus, Pool, PoolConfig, Request};
//! use serde_json::json;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = Pool::start(PoolConfig::default(), EventBus::default()).await?;
//! let resp = pool.execute(Request::new("echo", json!({"hello": "world"}))).await?;
//! assert_eq!(resp.value()?, json!({"hello": "world"}));
//! pool.shutdown(std::time::Duration::from_secs(5)).await;
//! # Ok(()) }
//! ```
//!
//! ## How a request flows
//! [`Pool`] (a cheap, cloneable handle and a `tower::Service<Request>`) admits the
//! request against `size + max_queue_size` slots, validates it (arguments, payload
//! size, known command, session), and queues it: on the private queue of the worker
//! holding its session, else on the shared queue. Each worker slot runs a *driver*
//! that takes one job at a time and calls its Python process through a transport
//! (gRPC over a Unix socket; see `proto/`), and a *monitor* beside it that health-checks
//! the worker and reads its RSS. Results come back as [`Response`] or a typed
//! [`Error`]; streaming calls return a [`ResponseStream`].
//!
//! ## What an adapter offers
//! The first worker to start describes its adapter's commands; [`Pool::command_specs`]
//! returns them as [`CommandSpec`]s (name, streaming or async, docstring, parameters,
//! and JSON Schemas of the arguments and result built from the type hints), `None`
//! until a worker has described them. An async command still running at its deadline
//! is cancelled inside Python and fails with [`Error::Timeout`] with
//! `cancelled_in_python` set: the worker is kept.
//!
//! ## What happens around it
//! Lifecycle and request events flow to the [`EventBus`] (typed, sampled, sanitized,
//! never blocking). [`Pool::stats`] reads counters and a sliding window without ever
//! calling a worker. Workers are supervised per slot: crashes restart with backoff,
//! recycling follows `max_requests`/`max_lifetime`/`max_memory_mb`, a request timeout
//! replaces the worker, and no worker outlives the pool process.

#![warn(missing_docs)]

pub mod catalog;
pub mod clock;
pub mod config;
pub mod error;
pub mod events;
mod fork_server;
mod memory;
mod observe;
pub mod pool;
pub mod pools;
mod process;
pub mod python_env;
pub mod request;
pub mod sanitize;
pub mod session;
pub mod stats;
pub mod sync;
mod transport;
mod worker;
mod worker_span;

/// The optional cargo features this build of `snakepit-core` has (`grpc`, `bootstrap`).
pub const FEATURES: &[&str] = &[
    #[cfg(feature = "grpc")]
    "grpc",
    #[cfg(feature = "bootstrap")]
    "bootstrap",
];

/// The worker contract (`proto/snakepit/v1/worker.proto`): prost messages, and the
/// tonic client with the `grpc` feature. Generated, and checked in so that a build
/// needs no protobuf compiler (`tests/proto_generated.rs` keeps it fresh).
#[allow(clippy::all, missing_docs)]
#[path = "generated/snakepit.v1.rs"]
pub mod proto;

pub use catalog::CommandSpec;
pub use config::{
    ConfigError, ForkAfter, OnWorkerLoss, PoolConfig, PythonConfig, SessionConfig, StartMethod,
    TransportKind, WhenFull,
};
pub use error::{Error, ExitInfo, PythonError, StackDumpError, StartError};
pub use events::{CrashCause, Event, EventBus, EventData, EventKind, EventsConfig, Pattern};
pub use observe::user_metrics;
pub use pool::{Pool, ResponseStream, StreamEnd, StreamOutcome, StreamingPool};
pub use pools::{Pools, StreamingPools};
pub use request::{Args, Breakdown, Chunk, Request, Response, Served, WorkerSpan};
pub use sanitize::{SanitizeConfig, Sanitizer};
pub use session::{SessionInfo, SessionOptions};
pub use stats::{
    PoolLoad, PoolStats, PythonLogCounts, TemplateStats, WindowStats, WorkerState, WorkerStats,
};
