//! Why a worker's service ends (`Exit`), and what its monitor may ask of its driver
//! (`Control`): shared by the driver, the slot, and the code a worker leaves through.

use std::sync::Arc;

use crate::error::ExitInfo;

/// Why a worker's driver stopped.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Exit {
    /// The pool is stopping.
    Shutdown,
    /// The process died on its own.
    Crashed { exit: ExitInfo },
    /// Replaced on purpose (max_requests, max_lifetime, memory, health checks, timeout).
    Recycle { reason: &'static str },
    /// The process lives but its transport is unusable.
    Broken { message: String },
}

/// What the monitor asks of the driver.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) enum Control {
    #[default]
    Run,
    /// Replace the worker after its current request.
    Recycle { reason: &'static str },
    /// The worker failed `failures` health checks in a row: replace it now, failing
    /// the request it is stuck in (with the stacks taken, to say where).
    Unhealthy {
        failures: u32,
        python_stack: Option<Arc<str>>,
    },
}

impl Control {
    /// The recycle asked for, if any (`health_check_failed` for an unhealthy worker).
    pub(crate) fn recycle_reason(&self) -> Option<&'static str> {
        match self {
            Control::Run => None,
            Control::Recycle { reason } => Some(reason),
            Control::Unhealthy { .. } => Some("health_check_failed"),
        }
    }
}

/// Recycles that only follow policy (the worker itself is fine): a worker holding
/// sessions may finish them first.
pub(crate) fn is_planned(reason: &str) -> bool {
    matches!(reason, "max_requests" | "max_lifetime" | "max_memory")
}
