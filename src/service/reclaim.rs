//! Making room at the connection cap: when a worker serves `--worker-connections` connections
//! and a new client is waiting, an idle one is closed for it, as nginx does when its
//! connection table is full ("worker_connections are not enough, reusing connections").
//!
//! A service says when a connection may be closed for this ([`Reclaim::set_idle`]: a
//! kept-alive HTTP connection between requests, or one that has not sent a full request head
//! yet) and when it may not ([`Reclaim::set_busy`]: a request or a response in progress).
//! The accept loop, at the cap with a client waiting, asks the [`Reclaimer`] to close one:
//! the least recently active kept-alive connection first, then the oldest silent one. A
//! connection in the middle of an exchange is never chosen. A service that never calls
//! `set_idle` (echo, chat: an idle member is a member) is never closed for a newcomer.
//!
//! Connections held outside any task ([`super::park`]) are offered through a [`Spare`]: a
//! parked kept-alive connection has been idle longest, so it is chosen before any in the table.
//!
//! This module owns the worker's table of such connections; it knows nothing of sockets. The
//! table is behind a `Mutex` only because tasks must be `Send`: a worker runs one thread, so
//! the lock is never contended.

use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use tokio::sync::Notify;

/// Why a connection may be closed to make room, in the order they are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum IdleClass {
    /// Kept alive between requests: its client has been served. Closed first.
    KeptAlive,
    /// Connected, but no full request head yet. Closed when no kept-alive one is left.
    NoRequest,
}

#[derive(Debug)]
struct Entry {
    /// `Some` while the connection may be closed for a newcomer.
    idle: Option<(IdleClass, Instant)>,
    /// Chosen: the connection should close now.
    evicted: bool,
    /// Woken when chosen.
    waker: Option<Waker>,
}

#[derive(Debug, Default)]
struct Table {
    entries: Vec<Option<Entry>>,
    /// Free indexes in `entries`.
    free: Vec<usize>,
    /// How many entries are idle (so the accept loop need not scan to know).
    idle: usize,
}

#[derive(Debug, Default)]
struct Shared {
    table: Mutex<Table>,
    /// Notified when a connection becomes idle, for an accept loop waiting at the cap.
    became_idle: Notify,
    /// Closable connections that are not in the table (parked ones), chosen first.
    spare: Mutex<Option<Arc<dyn Spare>>>,
}

/// Closable connections kept outside the table, by whoever holds them (the worker's parked
/// connections, [`super::park`]): every one of them counts as idle, and they are closed first.
pub trait Spare: Send + Sync + std::fmt::Debug {
    /// How many could be closed now.
    fn count(&self) -> usize;
    /// Closes the least recently active one, releasing what it held; false if none.
    fn close_one(&self) -> bool;
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Table> {
        // A panic while holding this lock leaves a table that is still consistent (every
        // method updates it in one step), so a poisoned lock is used as it is.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The worker's side: registers connections and chooses which one to close.
#[derive(Debug, Clone, Default)]
pub struct Reclaimer {
    shared: Arc<Shared>,
}

/// One connection's side: held in its [`super::ConnContext`]; dropping it unregisters.
#[derive(Debug)]
pub struct Reclaim {
    /// `None` for a connection no worker table knows (tests, and services run alone).
    shared: Option<Arc<Shared>>,
    key: usize,
}

impl Reclaimer {
    /// Registers a new connection, busy (not closable) until its service says otherwise.
    pub fn register(&self) -> Reclaim {
        let mut t = self.shared.lock();
        let entry = Entry {
            idle: None,
            evicted: false,
            waker: None,
        };
        let key = match t.free.pop() {
            Some(k) => {
                t.entries[k] = Some(entry);
                k
            }
            None => {
                t.entries.push(Some(entry));
                t.entries.len() - 1
            }
        };
        Reclaim {
            shared: Some(Arc::clone(&self.shared)),
            key,
        }
    }

    /// Adds the closable connections `spare` holds outside the table (chosen before any in it).
    pub fn set_spare(&self, spare: Arc<dyn Spare>) {
        *self.shared.spare.lock().unwrap_or_else(|p| p.into_inner()) = Some(spare);
    }

    fn spare(&self) -> Option<Arc<dyn Spare>> {
        self.shared
            .spare
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether some connection could be closed now.
    pub fn has_idle(&self) -> bool {
        self.shared.lock().idle > 0 || self.spare().is_some_and(|s| s.count() > 0)
    }

    /// Resolves when a connection becomes idle (after a call in which none was).
    pub async fn became_idle(&self) {
        self.shared.became_idle.notified().await
    }

    /// Chooses the connection to close for a newcomer (a spare one first, then the least
    /// recently active kept-alive one, else the oldest that has sent no request), marks it and
    /// wakes it (a spare one is closed at once). False when no connection is idle.
    pub fn evict_one(&self) -> bool {
        if self.spare().is_some_and(|s| s.close_one()) {
            return true;
        }
        let mut t = self.shared.lock();
        let victim = t
            .entries
            .iter()
            .enumerate()
            .filter_map(|(k, e)| Some((e.as_ref()?.idle?, k)))
            .min();
        let Some((_, key)) = victim else {
            return false;
        };
        let e = t.entries[key].as_mut().expect("chosen from live entries");
        e.idle = None;
        e.evicted = true;
        let waker = e.waker.take();
        t.idle -= 1;
        drop(t);
        if let Some(w) = waker {
            w.wake();
        }
        true
    }
}

impl Reclaim {
    /// A handle no worker knows: never chosen (for a service run outside a worker).
    pub fn detached() -> Reclaim {
        Reclaim {
            shared: None,
            key: 0,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Table, usize) -> T) -> Option<T> {
        let shared = self.shared.as_ref()?;
        let mut t = shared.lock();
        Some(f(&mut t, self.key))
    }

    /// From now on the connection may be closed for a newcomer, as `class`.
    pub fn set_idle(&self, class: IdleClass) {
        self.set_idle_since(class, Instant::now);
    }

    /// [`Reclaim::set_idle`] for a caller that has read the clock already: `since()` is when
    /// the connection became idle, called only when that is news to the table (the app's
    /// request end passes the instant it read; a clock read is ~1% of a hello-world request).
    pub fn set_idle_since(&self, class: IdleClass, since: impl FnOnce() -> Instant) {
        let newly = self.with(|t, k| {
            let e = t.entries[k].as_mut().expect("registered");
            if e.evicted {
                return false;
            }
            let was = e.idle.replace((class, since())).is_some();
            if !was {
                t.idle += 1;
            }
            !was
        });
        if newly == Some(true)
            && let Some(s) = &self.shared
        {
            s.became_idle.notify_waiters();
        }
    }

    /// From now on the connection is working (a request or response in progress) and is
    /// never closed for a newcomer.
    pub fn set_busy(&self) {
        self.with(|t, k| {
            let e = t.entries[k].as_mut().expect("registered");
            if e.idle.take().is_some() {
                t.idle -= 1;
            }
        });
    }

    /// Ready once the connection was chosen to close; registers `cx`'s waker otherwise. Poll
    /// it beside the idle wait (it stores no waiter in the caller's future).
    pub fn poll_evicted(&self, cx: &mut Context<'_>) -> Poll<()> {
        let chosen = self.with(|t, k| {
            let e = t.entries[k].as_mut().expect("registered");
            if e.evicted {
                true
            } else {
                if !e.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    e.waker = Some(cx.waker().clone());
                }
                false
            }
        });
        if chosen == Some(true) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for Reclaim {
    fn drop(&mut self) {
        self.with(|t, k| {
            if let Some(e) = t.entries[k].take()
                && e.idle.is_some()
            {
                t.idle -= 1;
            }
            t.free.push(k);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evicted(r: &Reclaim) -> bool {
        r.poll_evicted(&mut Context::from_waker(Waker::noop()))
            .is_ready()
    }

    #[test]
    fn kept_alive_connections_go_first_then_the_oldest_silent_one_never_a_busy_one() {
        let r = Reclaimer::default();
        let busy = r.register();
        let silent_old = r.register();
        silent_old.set_idle(IdleClass::NoRequest);
        let silent_new = r.register();
        silent_new.set_idle(IdleClass::NoRequest);
        let kept_old = r.register();
        kept_old.set_idle(IdleClass::KeptAlive);
        let kept_new = r.register();
        kept_new.set_idle(IdleClass::KeptAlive);
        assert!(r.has_idle());

        assert!(r.evict_one());
        assert!(evicted(&kept_old) && !evicted(&kept_new));
        assert!(r.evict_one());
        assert!(evicted(&kept_new));
        assert!(r.evict_one());
        assert!(evicted(&silent_old) && !evicted(&silent_new));
        // A connection that got busy again is not chosen.
        silent_new.set_busy();
        assert!(!r.has_idle());
        assert!(!r.evict_one());
        assert!(!evicted(&busy) && !evicted(&silent_new));
    }

    #[test]
    fn dropped_connections_leave_the_table() {
        let r = Reclaimer::default();
        let a = r.register();
        a.set_idle(IdleClass::KeptAlive);
        drop(a);
        assert!(!r.has_idle());
        assert!(!r.evict_one());
        let b = r.register();
        assert_eq!(b.key, 0, "the slot is reused");
        assert!(!evicted(&Reclaim::detached()));
    }
}
