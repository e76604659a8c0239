//! Session lifecycle around the store (`crate::session`): closing a session on its
//! worker, the expiry sweep, and the `session.*` events of creation, re-creation and
//! loss.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::job::Job;
use super::report::{ms, release_unrun};
use super::shared::PoolShared;
use crate::error::Error;
use crate::events::{data, EventKind};
use crate::session::Claim;
use crate::worker::Worker;

/// How long closing a session on its worker may take.
const SESSION_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long initialising a session may take before the request proceeds without it.
const SESSION_INIT_TIMEOUT: Duration = Duration::from_secs(5);

/// A session's request reached `worker`: may it run here (see [`Claim`])? Reports a
/// loss found on the way (the holder is gone and nobody said so yet).
pub(crate) fn claim_for(
    shared: &PoolShared,
    worker: &Worker,
    session_id: &str,
    takes_new: bool,
) -> Result<Claim, Error> {
    // Lock order: sessions, then the worker registry (read); never the reverse.
    let (claim, newly_lost) = shared
        .sessions
        .claim(session_id, &worker.id, takes_new, |holder| {
            shared.workers().contains_key(holder)
        });
    if let Some((ended, reason)) = newly_lost {
        emit_session_lost(shared, &ended, &reason);
    }
    claim
}

/// Send a session's job to the worker holding it (or, with `None` or a holder that
/// just left, back to the shared queue), for it to be taken again.
pub(crate) fn forward(shared: &PoolShared, holder: Option<Arc<str>>, job: Job) {
    let Some(mut job) = release_unrun(shared, job) else {
        return;
    };
    if let Some(entry) = holder.as_ref().and_then(|h| {
        let workers = shared.workers();
        workers.get(h).map(|e| e.private_tx.clone())
    }) {
        match entry.send(job) {
            Ok(()) => return,
            Err(returned) => job = returned.0,
        }
    }
    shared.dispatch.submit(job);
}

/// Initialise the session on this worker if the claim says so; `Some(why)` when it was
/// re-created after its state was lost.
pub(crate) async fn prepare_on(
    shared: &PoolShared,
    worker: &Worker,
    job: &Job,
    claim: Claim,
) -> Option<String> {
    let session_id = job.session_id.as_deref().unwrap_or_default();
    let (metadata, recreated) = match claim {
        Claim::Held | Claim::Elsewhere(_) => return None,
        Claim::Init(metadata) => (metadata, None),
        Claim::Recreate { metadata, reason } => {
            tracing::warn!(pool = %shared.name, worker_id = %worker.id, session_id, %reason,
                "session re-created empty: its state was lost with its previous worker");
            emit_session_recreated(shared, session_id, &metadata, job.correlation_id.as_deref());
            (metadata, Some(reason))
        }
    };
    if let Err(e) = worker
        .transport
        .init_session(session_id, metadata, SESSION_INIT_TIMEOUT)
        .await
    {
        // The worker creates unknown sessions on first use, without metadata.
        tracing::warn!(worker_id = %worker.id, session_id, error = %e,
            "could not initialise session on worker; it starts without metadata");
    }
    recreated
}

pub(crate) fn emit_session_created(
    shared: &PoolShared,
    id: &str,
    ttl: Duration,
    started: Instant,
    correlation_id: Option<&str>,
    recreated: bool,
    metadata: impl FnOnce() -> serde_json::Value,
) {
    shared
        .events
        .emit_with(EventKind::SessionCreated, correlation_id, || {
            data::SessionCreated {
                creation_time_ms: ms(started.elapsed()),
                session_id: id.to_string(),
                pool_name: shared.name.to_string(),
                ttl_seconds: ttl.as_secs(),
                metadata: metadata(),
                recreated,
            }
            .into()
        });
}

/// A session lost with its worker was re-created on another (`recreate` policy).
pub(crate) fn emit_session_recreated(
    shared: &PoolShared,
    id: &str,
    metadata_json: &[u8],
    correlation_id: Option<&str>,
) {
    let ttl = shared.sessions.get(id).map_or(Duration::ZERO, |s| s.ttl);
    emit_session_created(
        shared,
        id,
        ttl,
        Instant::now(),
        correlation_id,
        true,
        || serde_json::from_slice(metadata_json).unwrap_or(serde_json::Value::Null),
    );
}

/// `session.expired` with reason `worker_lost`: the session's state went with its worker.
pub(crate) fn emit_session_lost(shared: &PoolShared, ended: &crate::session::Ended, detail: &str) {
    tracing::warn!(pool = %shared.name, session_id = %ended.id, reason = detail,
        "session lost its state with its worker");
    emit_session_expired(shared, ended, "worker_lost", Some(detail));
}

fn emit_session_expired(
    shared: &PoolShared,
    ended: &crate::session::Ended,
    reason: &str,
    detail: Option<&str>,
) {
    shared
        .events
        .emit_with(EventKind::SessionExpired, None, || {
            data::SessionExpired {
                lifetime_ms: ms(ended.lifetime),
                requests_handled: ended.requests,
                session_id: ended.id.clone(),
                pool_name: shared.name.to_string(),
                reason: reason.to_string(),
                detail: detail.map(str::to_string),
            }
            .into()
        });
}

/// Tell the worker holding a session to drop it (best effort) and emit `session.expired`.
pub(crate) async fn end_session(shared: &PoolShared, ended: crate::session::Ended, reason: &str) {
    if ended.was_lost {
        // A tombstone: its worker is gone and its `session.expired` went out at the loss.
        return;
    }
    if let Some(worker_id) = &ended.worker_id {
        let transport = shared.workers().get(worker_id).map(|w| w.transport.clone());
        if let Some(t) = transport {
            if let Err(e) = t.close_session(&ended.id, SESSION_CLOSE_TIMEOUT).await {
                tracing::debug!(session_id = %ended.id, error = %e, "closing session on worker failed");
            }
        }
    }
    emit_session_expired(shared, &ended, reason, None);
}

/// Expire idle sessions every `sessions.cleanup_interval_ms`.
pub(crate) async fn sweep_sessions(shared: Arc<PoolShared>) {
    let period = Duration::from_millis(shared.config.sessions.cleanup_interval_ms);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let started = Instant::now();
        let expired = shared.sessions.take_expired(Instant::now());
        if expired.is_empty() {
            continue;
        }
        let count = expired.len() as u64;
        for ended in expired {
            end_session(&shared, ended, "ttl").await;
        }
        shared
            .events
            .emit_with(EventKind::SessionCleanup, None, || {
                data::SessionCleanup {
                    sessions_cleaned: count,
                    cleanup_time_ms: ms(started.elapsed()),
                    pool_name: shared.name.to_string(),
                    cleanup_reason: "ttl_expired".into(),
                }
                .into()
            });
    }
}
