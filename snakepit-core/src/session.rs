//! Sessions: state a caller keeps in one worker across requests.
//!
//! A session has a TTL that counts from its last use (idle expiry) and metadata. Its
//! requests go to the worker that holds it while that worker lives; when it does not
//! (crash, recycle), the next request goes to any worker and the session is created
//! there afresh (its Python-side state is lost, its metadata is not). The store is
//! plain data behind a mutex: routing never calls a worker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use serde::Serialize;

use crate::error::Error;

/// Options for a new session.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionOptions {
    /// Idle time before expiry; the pool's `sessions.default_ttl_secs` when None.
    pub ttl: Option<Duration>,
    /// Passed to the worker's `on_session_start`; sanitized in events.
    pub metadata: serde_json::Value,
    /// A caller-chosen id; generated when None.
    pub id: Option<String>,
}

/// A session as the pool sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionInfo {
    pub id: String,
    #[serde(skip)]
    pub created_at: SystemTime,
    pub ttl: Duration,
    /// The worker holding it, if any request ran yet.
    pub worker_id: Option<String>,
    pub requests: u64,
}

struct Entry {
    created_at: SystemTime,
    created: Instant,
    last_used: Instant,
    ttl: Duration,
    metadata_json: Bytes,
    worker_id: Option<Arc<str>>,
    requests: u64,
}

impl Entry {
    fn info(&self, id: &str) -> SessionInfo {
        SessionInfo {
            id: id.to_string(),
            created_at: self.created_at,
            ttl: self.ttl,
            worker_id: self.worker_id.as_deref().map(str::to_string),
            requests: self.requests,
        }
    }
}

/// A session that ended, for events.
pub(crate) struct Ended {
    pub id: String,
    pub lifetime: Duration,
    pub requests: u64,
    pub worker_id: Option<Arc<str>>,
}

pub(crate) struct SessionStore {
    map: Mutex<HashMap<String, Entry>>,
    max: usize,
}

impl SessionStore {
    pub fn new(max: usize) -> Self {
        SessionStore {
            map: Mutex::new(HashMap::new()),
            max,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        match self.map.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        }
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
        let metadata_json = match &opts.metadata {
            serde_json::Value::Null => Bytes::from_static(b"{}"),
            v @ serde_json::Value::Object(_) => Bytes::from(v.to_string()),
            _ => {
                return Err(Error::invalid_args(
                    "session metadata must be a JSON object",
                ))
            }
        };
        let mut map = self.lock();
        if map.len() >= self.max {
            return Err(Error::invalid_args(format!(
                "too many sessions ({}; sessions.max_sessions); close some or raise the limit",
                map.len()
            )));
        }
        if map.contains_key(&id) {
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
        };
        let info = entry.info(&id);
        map.insert(id, entry);
        Ok(info)
    }

    /// A request arrives for the session: refresh it and say which worker holds it.
    pub fn route(&self, id: &str) -> Result<Option<Arc<str>>, Error> {
        let mut map = self.lock();
        let entry = map.get_mut(id).ok_or_else(|| Error::SessionNotFound {
            session_id: id.to_string(),
        })?;
        entry.last_used = Instant::now();
        entry.requests += 1;
        Ok(entry.worker_id.clone())
    }

    /// A worker is about to run a request of the session. Returns the metadata to
    /// initialise the session with when this worker does not hold it yet.
    pub fn claim(&self, id: &str, worker_id: &Arc<str>) -> Option<Bytes> {
        let mut map = self.lock();
        let entry = map.get_mut(id)?;
        if entry.worker_id.as_ref() == Some(worker_id) {
            return None;
        }
        entry.worker_id = Some(worker_id.clone());
        Some(entry.metadata_json.clone())
    }

    pub fn remove(&self, id: &str) -> Option<Ended> {
        let entry = self.lock().remove(id)?;
        Some(Ended {
            id: id.to_string(),
            lifetime: entry.created.elapsed(),
            requests: entry.requests,
            worker_id: entry.worker_id,
        })
    }

    /// Remove and return every session idle past its TTL.
    pub fn take_expired(&self, now: Instant) -> Vec<Ended> {
        let mut map = self.lock();
        let expired: Vec<String> = map
            .iter()
            .filter(|(_, e)| now.saturating_duration_since(e.last_used) >= e.ttl)
            .map(|(id, _)| id.clone())
            .collect();
        expired
            .into_iter()
            .filter_map(|id| {
                map.remove(&id).map(|e| Ended {
                    lifetime: now.saturating_duration_since(e.created),
                    requests: e.requests,
                    worker_id: e.worker_id,
                    id,
                })
            })
            .collect()
    }

    /// Remove every session (shutdown).
    pub fn take_all(&self) -> Vec<Ended> {
        let now = Instant::now();
        self.lock()
            .drain()
            .map(|(id, e)| Ended {
                lifetime: now.saturating_duration_since(e.created),
                requests: e.requests,
                worker_id: e.worker_id,
                id,
            })
            .collect()
    }

    pub fn get(&self, id: &str) -> Option<SessionInfo> {
        self.lock().get(id).map(|e| e.info(id))
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn create_route_claim_expire() {
        let store = SessionStore::new(10);
        let opts = SessionOptions {
            metadata: json!({"user": "u"}),
            ..Default::default()
        };
        let s = store.create(&opts, Duration::from_millis(50)).unwrap();
        assert_eq!(store.route(&s.id).unwrap(), None);
        let w1: Arc<str> = Arc::from("w1");
        assert_eq!(
            store.claim(&s.id, &w1).as_deref(),
            Some(&b"{\"user\":\"u\"}"[..])
        );
        assert_eq!(store.claim(&s.id, &w1), None, "already held by w1");
        assert_eq!(store.route(&s.id).unwrap().as_deref(), Some("w1"));
        assert!(store.take_expired(Instant::now()).is_empty());
        let ended = store.take_expired(Instant::now() + Duration::from_secs(1));
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].requests, 2);
        assert!(matches!(
            store.route(&s.id),
            Err(Error::SessionNotFound { .. })
        ));
    }

    #[test]
    fn limits_and_bad_input() {
        let store = SessionStore::new(1);
        let ttl = Duration::from_secs(1);
        let bad = SessionOptions {
            metadata: json!([1]),
            ..Default::default()
        };
        assert!(store.create(&bad, ttl).is_err());
        store.create(&SessionOptions::default(), ttl).unwrap();
        let err = store.create(&SessionOptions::default(), ttl).unwrap_err();
        assert!(err.to_string().contains("max_sessions"), "{err}");
    }
}
