//! A per-test tracing subscriber that cannot be silently bypassed.
//!
//! Tests in one binary run in parallel threads, each with its own scoped subscriber.
//! tracing-core 0.1 caches a callsite's interest when the callsite is first hit; while
//! exactly one dispatcher is registered it asks only the *hitting thread's* default.
//! So if another test's thread (no subscriber: "never") reaches a span callsite first,
//! the span is disabled for every thread, and this test's requests get no span, no
//! trace id, no exemplar. CI saw exactly that, now and then. Keeping a second, permanent
//! no-op dispatcher registered makes tracing-core ask every registered dispatcher.

use std::sync::OnceLock;
use tracing::dispatcher::{DefaultGuard, Dispatch};

static ALWAYS_REGISTERED: OnceLock<Dispatch> = OnceLock::new();

/// Make `dispatch` this thread's default for as long as the guard lives.
pub fn set_test_default(dispatch: &Dispatch) -> DefaultGuard {
    ALWAYS_REGISTERED.get_or_init(|| Dispatch::new(tracing::subscriber::NoSubscriber::default()));
    tracing::dispatcher::set_default(dispatch)
}
