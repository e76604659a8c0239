//! Sessions: state a caller keeps in one worker across requests.
//!
//! A session has a TTL that counts from its last use (idle expiry) and metadata. Its
//! requests go to the worker that holds it while that worker lives. When that worker
//! goes away (crash, timeout, a recycle past its grace), the session's Python-side
//! state is gone, and the pool never hides that: under `on_worker_loss = "fail"` (the
//! default) the session becomes a tombstone and every later request on it fails with
//! [`Error::SessionLost`] until it is closed or its TTL passes; under `"recreate"` the
//! next request re-creates it on another worker (with its metadata) and the response
//! says so. Either way a `session.expired` event with reason `worker_lost` is emitted at
//! the moment of the loss.
//!
//! The store is plain data behind a mutex: routing never calls a worker. It wakes
//! waiters (`SessionStore::changed`) whenever a session ends, so a worker whose
//! planned recycle waits for its sessions learns at once when the last one is gone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::Notify;

use crate::config::OnWorkerLoss;
use crate::error::Error;
use crate::sync;

/// Longest TTL a caller may ask for.
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Options for a new session.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionOptions {
    /// Idle time before expiry; the pool's `sessions.default_ttl_secs` when None.
    pub ttl: Option<Duration>,
    /// Passed to the worker's `on_session_start`; sanitized in events.
    pub metadata: serde_json::Value,
    /// A caller-chosen id; generated when None.
    pub id: Option<String>,
    /// What happens when the worker holding the session goes away; the pool's
    /// `sessions.on_worker_loss` when None.
    pub on_worker_loss: Option<OnWorkerLoss>,
}

/// A session as the pool sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionInfo {
    /// The session's id (what requests name).
    pub id: String,
    /// When it was created.
    #[serde(skip)]
    pub created_at: SystemTime,
    /// Idle time after which it expires.
    pub ttl: Duration,
    /// The worker holding it, if any request ran yet.
    pub worker_id: Option<String>,
    /// Requests it has served.
    pub requests: u64,
    /// What happens when its worker goes away with its state.
    pub on_worker_loss: OnWorkerLoss,
    /// Set once the session's worker was lost: why (the session answers `SessionLost`,
    /// or, under `recreate`, is re-created by its next request).
    pub lost: Option<String>,
}

struct Entry {
    created_at: SystemTime,
    created: Instant,
    last_used: Instant,
    ttl: Duration,
    metadata_json: Bytes,
    worker_id: Option<Arc<str>>,
    requests: u64,
    on_loss: OnWorkerLoss,
    /// The worker holding it was lost for this reason: a tombstone (`Fail`) or a session
    /// waiting to be re-created (`Recreate`).
    lost: Option<String>,
}

impl Entry {
    fn info(&self, id: &str) -> SessionInfo {
        SessionInfo {
            id: id.to_string(),
            created_at: self.created_at,
            ttl: self.ttl,
            worker_id: self.worker_id.as_deref().map(str::to_string),
            requests: self.requests,
            on_worker_loss: self.on_loss,
            lost: self.lost.clone(),
        }
    }

    fn is_tombstone(&self) -> bool {
        self.lost.is_some() && self.on_loss == OnWorkerLoss::Fail
    }

    fn ended(&self, id: &str, now: Instant) -> Ended {
        Ended {
            id: id.to_string(),
            lifetime: now.saturating_duration_since(self.created),
            requests: self.requests,
            worker_id: self.worker_id.clone(),
            was_lost: self.is_tombstone(),
        }
    }
}

/// A session that ended (or whose state was lost), for events.
pub(crate) struct Ended {
    pub id: String,
    pub lifetime: Duration,
    pub requests: u64,
    pub worker_id: Option<Arc<str>>,
    /// It was a tombstone: its `session.expired` (`worker_lost`) went out already.
    pub was_lost: bool,
}

/// What a worker about to run a session's request must do first.
#[derive(Debug, PartialEq)]
pub(crate) enum Claim {
    /// This worker holds the session already.
    Held,
    /// First request of the session: initialise it here with this metadata.
    Init(Bytes),
    /// Its previous worker was lost (`recreate` policy): initialise it here afresh; the
    /// response says why.
    Recreate { metadata: Bytes, reason: String },
    /// Not on this worker: its holder is this other live worker (`Some`), or this
    /// worker takes no new sessions (`None`: any other worker may).
    Elsewhere(Option<Arc<str>>),
}

#[derive(Default)]
struct Inner {
    map: HashMap<String, Entry>,
    /// Entries that are tombstones, so counting live sessions is O(1).
    tombstones: usize,
}

pub(crate) struct SessionStore {
    inner: Mutex<Inner>,
    max: usize,
    default_on_loss: OnWorkerLoss,
    changed: Notify,
}

impl Inner {
    fn remove(&mut self, id: &str) -> Option<Entry> {
        let entry = self.map.remove(id)?;
        if entry.is_tombstone() {
            self.tombstones -= 1;
        }
        Some(entry)
    }
}

impl SessionStore {
    pub fn new(max: usize, default_on_loss: OnWorkerLoss) -> Self {
        SessionStore {
            inner: Mutex::new(Inner::default()),
            max,
            default_on_loss,
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        sync::lock(&self.inner)
    }

    /// Resolves after the next time a session ends or moves (closed, expired, lost).
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    pub fn create(&self, opts: &SessionOptions, ttl: Duration) -> Result<SessionInfo, Error> {
        let id = opts
            .id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        if id.is_empty() || id.len() > 256 {
            return Err(Error::invalid_args(
                "session id must be 1 to 256 characters",
            ));
        }
        if ttl.is_zero() || ttl > MAX_TTL {
            return Err(Error::invalid_args(format!(
                "session ttl must be 1 s to {} s, got {} s",
                MAX_TTL.as_secs(),
                ttl.as_secs()
            )));
        }
        let metadata_json = match &opts.metadata {
            serde_json::Value::Null => Bytes::from_static(b"{}"),
            v @ serde_json::Value::Object(_) => Bytes::from(v.to_string()),
            _ => {
                return Err(Error::invalid_args(
                    "session metadata must be a JSON object",
                ))
            }
        };
        let mut inner = self.lock();
        if inner.map.len() >= self.max {
            return Err(Error::invalid_args(format!(
                "too many sessions ({} open, {} lost and not yet closed or expired; \
                 sessions.max_sessions = {}); close some or raise the limit",
                inner.map.len() - inner.tombstones,
                inner.tombstones,
                self.max
            )));
        }
        if inner.map.contains_key(&id) {
            return Err(Error::invalid_args(format!(
                "session '{id}' already exists"
            )));
        }
        let now = Instant::now();
        let entry = Entry {
            created_at: SystemTime::now(),
            created: now,
            last_used: now,
            ttl,
            metadata_json,
            worker_id: None,
            requests: 0,
            on_loss: opts.on_worker_loss.unwrap_or(self.default_on_loss),
            lost: None,
        };
        let info = entry.info(&id);
        inner.map.insert(id, entry);
        Ok(info)
    }

    /// A request arrives for the session: refresh it and say which worker holds it.
    pub fn route(&self, id: &str) -> Result<Option<Arc<str>>, Error> {
        let mut inner = self.lock();
        let entry = inner
            .map
            .get_mut(id)
            .ok_or_else(|| Error::SessionNotFound {
                session_id: id.to_string(),
            })?;
        // A tombstone keeps its last use, so retries cannot keep it alive past its TTL.
        if let (true, Some(reason)) = (entry.is_tombstone(), &entry.lost) {
            return Err(Error::SessionLost {
                session_id: id.to_string(),
                reason: reason.clone(),
            });
        }
        entry.last_used = Instant::now();
        entry.requests += 1;
        Ok(entry.worker_id.clone())
    }

    /// A worker is about to run a request of the session: may it, and what must it do
    /// first? `takes_new` is false for a worker that takes no new sessions (draining);
    /// `is_live` says whether a worker is still registered. A session held by a live
    /// worker other than this one (two first requests raced through the shared queue)
    /// goes to its holder; one held by a worker that is gone counts as lost here if
    /// nobody marked it yet — the second value is that loss and why, for its event.
    pub fn claim(
        &self,
        id: &str,
        worker_id: &Arc<str>,
        takes_new: bool,
        is_live: impl Fn(&str) -> bool,
    ) -> (Result<Claim, Error>, Option<(Ended, String)>) {
        let mut inner = self.lock();
        let Inner { map, tombstones } = &mut *inner;
        let Some(entry) = map.get_mut(id) else {
            let err = Error::SessionNotFound {
                session_id: id.to_string(),
            };
            return (Err(err), None);
        };
        let mut newly_lost = None;
        match &entry.worker_id {
            Some(holder) if holder == worker_id => return (Ok(Claim::Held), None),
            Some(holder) if entry.lost.is_none() && is_live(holder) => {
                return (Ok(Claim::Elsewhere(Some(holder.clone()))), None)
            }
            Some(holder) if entry.lost.is_none() => {
                let reason = format!("its worker {holder} left");
                entry.lost = Some(reason.clone());
                newly_lost = Some((entry.ended(id, Instant::now()), reason));
                if entry.is_tombstone() {
                    *tombstones += 1;
                }
            }
            _ => {}
        }
        let claim = match entry.lost.clone() {
            Some(reason) if entry.on_loss == OnWorkerLoss::Fail => Err(Error::SessionLost {
                session_id: id.to_string(),
                reason,
            }),
            _ if !takes_new => Ok(Claim::Elsewhere(None)),
            Some(reason) => {
                entry.lost = None;
                entry.worker_id = Some(worker_id.clone());
                Ok(Claim::Recreate {
                    metadata: entry.metadata_json.clone(),
                    reason,
                })
            }
            None => {
                entry.worker_id = Some(worker_id.clone());
                Ok(Claim::Init(entry.metadata_json.clone()))
            }
        };
        drop(inner);
        if newly_lost.is_some() {
            self.changed.notify_waiters();
        }
        (claim, newly_lost)
    }

    /// The worker `worker_id` is gone for `reason`: every session it held loses its
    /// state. Returns them, for `session.expired` events.
    pub fn worker_lost(&self, worker_id: &str, reason: &str) -> Vec<Ended> {
        let now = Instant::now();
        let mut lost = Vec::new();
        {
            let mut inner = self.lock();
            let Inner { map, tombstones } = &mut *inner;
            for (id, entry) in map.iter_mut() {
                if entry.lost.is_none() && entry.worker_id.as_deref() == Some(worker_id) {
                    entry.lost = Some(reason.to_string());
                    lost.push(entry.ended(id, now));
                    match entry.on_loss {
                        OnWorkerLoss::Recreate => entry.worker_id = None,
                        OnWorkerLoss::Fail => *tombstones += 1,
                    }
                }
            }
        }
        if !lost.is_empty() {
            self.changed.notify_waiters();
        }
        lost
    }

    /// Live sessions `worker_id` holds (tombstones excluded).
    pub fn held_by(&self, worker_id: &str) -> usize {
        self.lock()
            .map
            .values()
            .filter(|e| e.lost.is_none() && e.worker_id.as_deref() == Some(worker_id))
            .count()
    }

    pub fn remove(&self, id: &str) -> Option<Ended> {
        let entry = self.lock().remove(id)?;
        self.changed.notify_waiters();
        Some(entry.ended(id, Instant::now()))
    }

    /// Remove every session idle past its TTL (tombstones included); returns the live
    /// ones (a tombstone's `session.expired` went out when it was lost).
    pub fn take_expired(&self, now: Instant) -> Vec<Ended> {
        let mut inner = self.lock();
        let expired: Vec<String> = inner
            .map
            .iter()
            .filter(|(_, e)| now.saturating_duration_since(e.last_used) >= e.ttl)
            .map(|(id, _)| id.clone())
            .collect();
        let mut ended = Vec::new();
        for id in expired {
            if let Some(e) = inner.remove(&id) {
                if !e.is_tombstone() {
                    ended.push(e.ended(&id, now));
                }
            }
        }
        drop(inner);
        if !ended.is_empty() {
            self.changed.notify_waiters();
        }
        ended
    }

    /// Remove every session (shutdown).
    pub fn take_all(&self) -> Vec<Ended> {
        let now = Instant::now();
        let ended = {
            let mut inner = self.lock();
            inner.tombstones = 0;
            inner.map.drain().map(|(id, e)| e.ended(&id, now)).collect()
        };
        self.changed.notify_waiters();
        ended
    }

    pub fn get(&self, id: &str) -> Option<SessionInfo> {
        self.lock().map.get(id).map(|e| e.info(id))
    }

    /// Sessions whose state is alive (tombstones excluded).
    pub fn len(&self) -> usize {
        let inner = self.lock();
        inner.map.len() - inner.tombstones
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
