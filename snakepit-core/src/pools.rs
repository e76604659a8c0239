//! Several named pools behind one service: each pool has its own adapter and config;
//! a request picks one with [`Request::pool`], else it goes to the default pool.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::ServiceExt;
use tower_service::Service;

use crate::config::PoolConfig;
use crate::error::{Error, StartError};
use crate::events::EventBus;
use crate::pool::{Pool, ResponseStream};
use crate::request::{Request, Response};

/// Named pools sharing one event bus, routed by [`Request::pool`]. Cheap to clone;
/// a `tower::Service` like [`Pool`] (and [`Pools::streaming`] for streams).
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use serde_json::json;
/// use snakepit_core::{EventBus, PoolConfig, Pools, Request};
///
/// let text = PoolConfig { adapter: "my_pkg.text:TextAdapter".into(), ..PoolConfig::named("text") };
/// let vision = PoolConfig { size: 1, adapter: "my_pkg.vision:VisionAdapter".into(), ..PoolConfig::named("vision") };
/// let pools = Pools::start(vec![text, vision], EventBus::default()).await?;
/// let label = pools
///     .execute(Request::new("classify", json!({"url": "https://example.com/cat.png"})).pool("vision"))
///     .await?;
/// // Without `.pool(..)` a request goes to the first pool, "text".
/// let tokens = pools.execute(Request::new("tokens", json!({"text": "hi"}))).await?;
/// pools.shutdown(std::time::Duration::from_secs(10)).await;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Pools {
    pools: Arc<BTreeMap<String, Pool>>,
    default: String,
}

impl Pools {
    /// Start every pool concurrently; if any fails, the others are shut down again.
    /// The first config names the default pool.
    pub async fn start(configs: Vec<PoolConfig>, events: EventBus) -> Result<Pools, StartError> {
        let Some(first) = configs.first() else {
            return Err(StartError::Config(crate::config::ConfigError::new(
                "pools",
                "[]",
                "at least one pool",
            )));
        };
        let default = first.name.clone();
        let mut seen = std::collections::BTreeSet::new();
        for cfg in &configs {
            if !seen.insert(cfg.name.clone()) {
                return Err(StartError::Config(crate::config::ConfigError::new(
                    format!("pools.{}", cfg.name),
                    &cfg.name,
                    "unique pool names",
                )));
            }
        }
        let results = futures_util::future::join_all(
            configs
                .into_iter()
                .map(|cfg| Pool::start(cfg, events.clone())),
        )
        .await;
        let mut pools = BTreeMap::new();
        let mut failure = None;
        for result in results {
            match result {
                Ok(pool) => {
                    pools.insert(pool.name().to_string(), pool);
                }
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        if let Some(err) = failure {
            for pool in pools.values() {
                pool.shutdown(Duration::ZERO).await;
            }
            return Err(err);
        }
        Ok(Pools {
            pools: Arc::new(pools),
            default,
        })
    }

    /// The pool named `name`.
    pub fn get(&self, name: &str) -> Option<&Pool> {
        self.pools.get(name)
    }

    /// The pool requests that name none go to (the first configured).
    pub fn default_pool(&self) -> &Pool {
        // `start` guarantees the default pool exists.
        &self.pools[&self.default]
    }

    /// Every pool.
    pub fn iter(&self) -> impl Iterator<Item = &Pool> {
        self.pools.values()
    }

    /// The pool a request asks for.
    pub fn route(&self, req: &Request) -> Result<&Pool, Error> {
        let name = req.pool.as_deref().unwrap_or(&self.default);
        self.pools.get(name).ok_or_else(|| Error::UnknownPool {
            name: name.to_string(),
            available: self.pools.keys().cloned().collect(),
        })
    }

    /// [`Pool::execute`] on the pool `req` names (else the default one).
    pub async fn execute(&self, req: Request) -> Result<Response, Error> {
        self.route(&req)?.execute(req).await
    }

    /// [`Pool::execute_stream`] on the pool `req` names (else the default one).
    pub async fn execute_stream(&self, req: Request) -> Result<ResponseStream, Error> {
        self.route(&req)?.execute_stream(req).await
    }

    /// These pools as a service of streaming calls, routed like [`Pools`]' unary ones.
    pub fn streaming(&self) -> StreamingPools {
        StreamingPools(self.clone())
    }

    /// Shut all pools down concurrently.
    pub async fn shutdown(&self, drain: Duration) {
        futures_util::future::join_all(self.pools.values().map(|p| p.shutdown(drain))).await;
    }
}

impl Service<Request> for Pools {
    type Response = Response;
    type Error = Error;
    type Future = crate::pool::PoolFuture<Response>;

    /// Always ready: admission happens in the routed pool (its `when_full` applies).
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        match self.route(&req) {
            Ok(pool) => Box::pin(pool.clone().oneshot(req)),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
}

/// Streaming calls of [`Pools`] as a `Service<Request, Response = ResponseStream>`,
/// from [`Pools::streaming`]: each request goes to the pool it names (else the
/// default), whose admission rules apply.
#[derive(Clone, Debug)]
pub struct StreamingPools(Pools);

impl Service<Request> for StreamingPools {
    type Response = ResponseStream;
    type Error = Error;
    type Future = crate::pool::PoolFuture<ResponseStream>;

    /// Always ready: admission happens in the routed pool (its `when_full` applies).
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        match self.0.route(&req) {
            Ok(pool) => Box::pin(pool.streaming().oneshot(req)),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
}
