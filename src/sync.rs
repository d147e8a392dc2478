//! The one way dialtone takes a `std::sync::Mutex`.
//!
//! Every lock in dialtone guards a few map or counter operations and a non-blocking send,
//! never an `.await`, so a std mutex is cheaper than an async one. None of those critical
//! sections can leave its data half-changed between statements, so a lock poisoned by a
//! panic elsewhere is carried on with: one bug must not take every later connection down.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, recovering it if a panic poisoned it.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
