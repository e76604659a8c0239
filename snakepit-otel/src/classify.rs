//! What the layers learn from a failure, whatever the error type of the service they
//! wrap — the way tower-http classifies responses.
//!
//! The layers are generic over `S::Error: ClassifyError`, so they compose with tower's
//! own middleware on either side: inside them, `Timeout`, `LoadShed` and `Buffer` turn
//! the pool's [`Error`] into a [`BoxError`], and the layers still see what happened —
//! the boxed pool error is found again (through `Buffer`'s wrapping too), a
//! `timeout::error::Elapsed` is a `Timeout`, a `load_shed::error::Overloaded` is the
//! caller being refused like `QueueFull`. Bring your own error type by implementing
//! the trait (or convert it to a `BoxError`).
//!
//! ```
//! use snakepit_otel::classify::ClassifyError;
//! let elapsed: tower::BoxError = Box::new(tower::timeout::error::Elapsed::new());
//! let failure = elapsed.classify();
//! assert_eq!(failure.error_type, "Timeout");
//! assert!(failure.server_side);
//! ```

use snakepit_core::{Error, PythonError};
use tower::BoxError;

use crate::labels::Evidence;

/// One failure, as the span, the metrics and the log line describe it.
#[derive(Debug, Clone, Copy)]
pub struct Failure<'a> {
    /// The span's `error.type` (the pool's error variant, or `_OTHER`).
    pub error_type: &'static str,
    /// The Python exception, when the worker raised one.
    pub python: Option<&'a PythonError>,
    /// Where the worker's Python threads were stuck, for a request that timed out.
    pub python_stack: Option<&'a str>,
    /// A fault of the pool or the worker (logged as an error), as opposed to a request
    /// the caller got wrong or that load shedding refused (logged as a warning).
    pub server_side: bool,
    /// Whether the command is known to exist (it ran, or the pool said it is unknown),
    /// which decides if it may have its own `command` label value.
    pub(crate) evidence: Evidence,
}

/// An error the telemetry layers can describe. Implemented for the pool's [`Error`]
/// and for [`BoxError`] (what tower's middleware returns).
pub trait ClassifyError: std::fmt::Display {
    /// What kind of failure this is.
    fn classify(&self) -> Failure<'_>;
}

impl ClassifyError for Error {
    fn classify(&self) -> Failure<'_> {
        Failure {
            error_type: self.error_type(),
            python: self.python(),
            python_stack: self.python_stack(),
            // A stream cut off because its caller stopped reading is the caller's doing.
            server_side: matches!(
                self,
                Error::Timeout {
                    caller_stalled: false,
                    ..
                } | Error::WorkerCrashed { .. }
                    | Error::WorkerUnhealthy { .. }
                    | Error::Transport { .. }
            ),
            evidence: match self {
                Error::Python(_) => Evidence::Ran,
                Error::UnknownCommand { .. } | Error::UnknownPool { .. } => Evidence::Unknown,
                _ => Evidence::Unclear,
            },
        }
    }
}

impl ClassifyError for BoxError {
    fn classify(&self) -> Failure<'_> {
        // The pool's error, boxed by a layer inside, or wrapped (Buffer's ServiceError
        // holds it as its source).
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self.as_ref());
        while let Some(err) = cause {
            if let Some(pool) = err.downcast_ref::<Error>() {
                return pool.classify();
            }
            if err.is::<tower::timeout::error::Elapsed>() {
                return other("Timeout", true);
            }
            if err.is::<tower::load_shed::error::Overloaded>() {
                return other("Overloaded", false);
            }
            if err.is::<tower::buffer::error::Closed>() {
                return other("ServiceClosed", true);
            }
            cause = err.source();
        }
        other("_OTHER", true)
    }
}

fn other(error_type: &'static str, server_side: bool) -> Failure<'static> {
    Failure {
        error_type,
        python: None,
        python_stack: None,
        server_side,
        evidence: Evidence::Unclear,
    }
}

/// How a finished call went, for [`Evidence`].
pub(crate) fn evidence_of<T, E: ClassifyError>(result: &Result<T, E>) -> Evidence {
    match result {
        Ok(_) => Evidence::Ran,
        Err(e) => e.classify().evidence,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_server_faults_unless_the_caller_stalled() {
        let timeout = |caller_stalled| Error::Timeout {
            command: "stream".into(),
            worker_id: "w".into(),
            timeout: std::time::Duration::from_secs(30),
            caller_stalled,
            cancelled_in_python: false,
            python_stack: None,
        };
        assert!(timeout(false).classify().server_side);
        let stalled = timeout(true);
        assert!(!stalled.classify().server_side);
        assert_eq!(stalled.classify().error_type, "Timeout");
        let cancelled = Error::Timeout {
            command: "async_sleep".into(),
            worker_id: "w".into(),
            timeout: std::time::Duration::from_millis(300),
            caller_stalled: false,
            cancelled_in_python: true,
            python_stack: Some("await asyncio.sleep(1)".into()),
        };
        let failure = cancelled.classify();
        assert_eq!(failure.error_type, "Timeout", "a timeout like any other");
        assert!(failure.server_side);
        assert_eq!(failure.python_stack, Some("await asyncio.sleep(1)"));
    }

    #[test]
    fn a_boxed_pool_error_is_found_again_through_wrapping() {
        let pool = Error::UnknownCommand {
            command: "nope".into(),
            available: vec![],
        };
        let boxed: BoxError = Box::new(pool);
        let f = boxed.classify();
        assert_eq!(f.error_type, "UnknownCommand");
        assert_eq!(f.evidence, Evidence::Unknown);
        assert!(!f.server_side);

        #[derive(Debug)]
        struct Wrapper(BoxError);
        impl std::fmt::Display for Wrapper {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "wrapped: {}", self.0)
            }
        }
        impl std::error::Error for Wrapper {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(self.0.as_ref())
            }
        }
        let wrapped: BoxError =
            Box::new(Wrapper(Box::new(Error::ShuttingDown { pool: "p".into() })));
        assert_eq!(wrapped.classify().error_type, "ShuttingDown");
    }

    #[test]
    fn tower_errors_have_names() {
        let shed: BoxError = Box::new(tower::load_shed::error::Overloaded::new());
        assert_eq!(shed.classify().error_type, "Overloaded");
        assert!(!shed.classify().server_side);
        let odd: BoxError = "something else".into();
        assert_eq!(odd.classify().error_type, "_OTHER");
        assert!(odd.classify().server_side);
    }
}
