//! `tower::Service` for [`Pool`] (unary calls) and for [`StreamingPool`] (streaming
//! calls of the same pool, from [`Pool::streaming`]). Two types rather than two
//! request types keep `svc.ready().await?.call(req)` free of type annotations.
//!
//! `poll_ready` is where admission happens. With `when_full = "reject"` it reserves a
//! slot if one is free and otherwise lets `call` fail fast with `QueueFull` (what an
//! HTTP edge wants); with `when_full = "wait"` it returns `Pending` until a slot frees
//! up, which is tower backpressure proper.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tower_service::Service;

use super::{call, Pool};
use crate::config::WhenFull;
use crate::error::Error;
use crate::request::{Request, Response};

/// The future of a call through the pool's `tower::Service` impls.
pub type PoolFuture<T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 'static>>;

impl Pool {
    fn poll_admission(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.reserved.is_some() {
            return Poll::Ready(Ok(()));
        }
        match self.shared.config.when_full {
            WhenFull::Reject => {
                // No free slot: stay ready; `call` reports QueueFull.
                self.reserved = self.shared.admission.clone().try_acquire_owned().ok();
                Poll::Ready(Ok(()))
            }
            WhenFull::Wait => match self.semaphore.poll_acquire(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(permit) => {
                    // None: the pool shut down; `call` reports ShuttingDown.
                    self.reserved = permit;
                    Poll::Ready(Ok(()))
                }
            },
        }
    }
}

impl Service<Request> for Pool {
    type Response = Response;
    type Error = Error;
    type Future = PoolFuture<Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.poll_admission(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        Box::pin(call::unary(self.shared.clone(), self.reserved.take(), req))
    }
}

/// A pool's streaming calls as a `Service<Request, Response = ResponseStream>`.
#[derive(Clone, Debug)]
pub struct StreamingPool(pub(crate) Pool);

impl Pool {
    /// This pool as a service of streaming calls.
    pub fn streaming(&self) -> StreamingPool {
        StreamingPool(self.clone())
    }
}

impl Service<Request> for StreamingPool {
    type Response = super::ResponseStream;
    type Error = Error;
    type Future = PoolFuture<super::ResponseStream>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.0.poll_admission(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        Box::pin(call::stream(
            self.0.shared.clone(),
            self.0.reserved.take(),
            req,
        ))
    }
}
