//! Locks that keep working after a thread panicked while holding them.
//!
//! A poisoned `std::sync` lock only says that some thread panicked inside it. Every
//! lock in Snakepit guards a small, self-consistent update (a queue push, a counter, a
//! map insert) whose partial state is still valid data, and the pool must keep serving
//! (and telemetry keep reporting) after, say, a panicking user callback on an event
//! consumer thread. So each lock is taken through these helpers, which recover the
//! guard instead of propagating the poison — one place to read that decision.
//!
//! ```
//! use std::sync::Mutex;
//! let queue = Mutex::new(vec![1]);
//! snakepit_core::sync::lock(&queue).push(2);
//! assert_eq!(*snakepit_core::sync::lock(&queue), vec![1, 2]);
//! ```

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// `mutex.lock()`, recovering the guard of a poisoned mutex.
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `rwlock.read()`, recovering the guard of a poisoned lock.
pub fn read<T: ?Sized>(rwlock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    rwlock.read().unwrap_or_else(PoisonError::into_inner)
}

/// `rwlock.write()`, recovering the guard of a poisoned lock.
pub fn write<T: ?Sized>(rwlock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    rwlock.write().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_still_hands_out_its_data() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let l = std::sync::Arc::new(RwLock::new(1));
        let (m2, l2) = (m.clone(), l.clone());
        let _ = std::thread::spawn(move || {
            let _g = m2.lock();
            let _w = l2.write();
            panic!("poison both");
        })
        .join();
        assert!(m.is_poisoned() && l.is_poisoned());
        *lock(&m) += 1;
        *write(&l) += 1;
        assert_eq!((*lock(&m), *read(&l)), (2, 2));
    }
}
