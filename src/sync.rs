//! Locking shared state that is never left half-changed.
//!
//! Every `std::sync::Mutex` in oxicorn guards state that a panicking holder cannot leave
//! inconsistent in a way that matters more than the panic itself: a panic inside `serve` ends
//! one connection (see [`crate::service::Serve`]), and the worker, the hub and the other
//! connections go on with the same maps. Refusing them the lock forever (what `.unwrap()` on a
//! poisoned lock would do) would turn one bad connection into a dead process, so a poisoned
//! lock is taken as it is.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, taking the state as it is if a holder panicked (see the module header).
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
