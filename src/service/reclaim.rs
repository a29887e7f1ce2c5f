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
//! This module owns the worker's table of such connections; it knows nothing of sockets.
//! A connection's own state (idle or busy, chosen or not) is a few atomics of its own, so the
//! calls a connection makes once or twice per request take no lock; the table (a `Mutex`
//! only because tasks must be `Send`: a worker runs one thread) is locked when a connection
//! comes or goes and when the accept loop chooses one (callgrind, 2026-11-30: the locked
//! table was ~1% of a hello-world request's instructions).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;

/// Why a connection may be closed to make room, in the order they are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum IdleClass {
    /// Kept alive between requests: its client has been served. Closed first.
    KeptAlive,
    /// Connected, but no full request head yet. Closed when no kept-alive one is left.
    NoRequest,
}

/// One connection's state, shared by its [`Reclaim`] and the table.
#[derive(Debug, Default)]
struct Slot {
    /// 0 while busy (never chosen); else the order it is chosen in: [`IdleClass`] in the top
    /// bit (kept-alive first), then when it became idle, as a number from the worker's
    /// sequence (earlier first). Lower is chosen first.
    idle: AtomicU64,
    /// Chosen: the connection should close now.
    evicted: AtomicBool,
    /// Woken when chosen.
    waker: Mutex<Option<Waker>>,
}

/// The top bit of [`Slot::idle`] for [`IdleClass::NoRequest`].
const NO_REQUEST: u64 = 1 << 63;

#[derive(Debug, Default)]
struct Table {
    entries: Vec<Option<Arc<Slot>>>,
    /// Free indexes in `entries`.
    free: Vec<usize>,
}

#[derive(Debug, Default)]
struct Shared {
    table: Mutex<Table>,
    /// How many connections are idle (so the accept loop need not scan to know).
    idle: AtomicUsize,
    /// The order connections became idle in ([`Slot::idle`]).
    sequence: AtomicU64,
    /// How many [`Reclaimer::became_idle`] calls are waiting: only then does a connection
    /// that becomes idle notify.
    waiting: AtomicUsize,
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

    /// Marks `slot` busy; true if it was idle (and is counted out).
    fn take_idle(&self, slot: &Slot) -> bool {
        let was =
            slot.idle.load(Ordering::Acquire) != 0 && slot.idle.swap(0, Ordering::AcqRel) != 0;
        if was {
            self.idle.fetch_sub(1, Ordering::AcqRel);
        }
        was
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
    slot: Arc<Slot>,
    key: usize,
}

impl Reclaimer {
    /// Registers a new connection, busy (not closable) until its service says otherwise.
    pub fn register(&self) -> Reclaim {
        let slot = Arc::new(Slot::default());
        let mut t = self.shared.lock();
        let key = match t.free.pop() {
            Some(k) => {
                t.entries[k] = Some(Arc::clone(&slot));
                k
            }
            None => {
                t.entries.push(Some(Arc::clone(&slot)));
                t.entries.len() - 1
            }
        };
        Reclaim {
            shared: Some(Arc::clone(&self.shared)),
            slot,
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
        self.shared.idle.load(Ordering::Acquire) > 0 || self.spare().is_some_and(|s| s.count() > 0)
    }

    /// Resolves when a connection becomes idle (after a call in which none was).
    pub async fn became_idle(&self) {
        /// Counts this call out of `waiting` however it ends (it is raced in a `select!`).
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let notified = self.shared.became_idle.notified();
        tokio::pin!(notified);
        // Listening before the count says so, so that a connection that sees the count
        // notifies a waiter that hears it.
        notified.as_mut().enable();
        self.shared.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.shared.waiting);
        notified.await;
    }

    /// Chooses the connection to close for a newcomer (a spare one first, then the least
    /// recently active kept-alive one, else the oldest that has sent no request), marks it and
    /// wakes it (a spare one is closed at once). False when no connection is idle.
    pub fn evict_one(&self) -> bool {
        if self.spare().is_some_and(|s| s.close_one()) {
            return true;
        }
        let t = self.shared.lock();
        let slot = loop {
            let victim = t
                .entries
                .iter()
                .flatten()
                .filter_map(|slot| {
                    let order = slot.idle.load(Ordering::Acquire);
                    (order != 0 && !slot.evicted.load(Ordering::Acquire)).then_some((order, slot))
                })
                .min_by_key(|(order, _)| *order);
            let Some((order, slot)) = victim else {
                return false;
            };
            // Taken out of the idle ones only as it was seen: one that got busy (or idle
            // again) since is looked at afresh.
            if slot
                .idle
                .compare_exchange(order, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                break Arc::clone(slot);
            }
        };
        drop(t);
        self.shared.idle.fetch_sub(1, Ordering::AcqRel);
        slot.evicted.store(true, Ordering::SeqCst);
        let waker = slot.waker.lock().unwrap_or_else(|p| p.into_inner()).take();
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
            slot: Arc::default(),
            key: 0,
        }
    }

    /// From now on the connection may be closed for a newcomer, as `class`; it counts as idle
    /// from now (a later call moves it back in the order).
    pub fn set_idle(&self, class: IdleClass) {
        let Some(shared) = &self.shared else {
            return;
        };
        if self.slot.evicted.load(Ordering::SeqCst) {
            return;
        }
        let at = shared.sequence.fetch_add(1, Ordering::Relaxed) + 1;
        let order = match class {
            IdleClass::KeptAlive => at,
            IdleClass::NoRequest => NO_REQUEST | at,
        };
        if self.slot.idle.swap(order, Ordering::AcqRel) != 0 {
            return;
        }
        shared.idle.fetch_add(1, Ordering::AcqRel);
        if self.slot.evicted.load(Ordering::SeqCst) {
            // Chosen meanwhile: it never was idle after all.
            shared.take_idle(&self.slot);
            return;
        }
        if shared.waiting.load(Ordering::SeqCst) > 0 {
            shared.became_idle.notify_waiters();
        }
    }

    /// From now on the connection is working (a request or response in progress) and is
    /// never closed for a newcomer.
    pub fn set_busy(&self) {
        if let Some(shared) = &self.shared {
            shared.take_idle(&self.slot);
        }
    }

    /// Whether the connection was chosen to close. It is woken then only if its waker was
    /// left with [`Reclaim::poll_evicted`] or [`Reclaim::watch`].
    pub fn is_evicted(&self) -> bool {
        self.slot.evicted.load(Ordering::Acquire)
    }

    /// Leaves `cx`'s waker to be woken when the connection is chosen, unless it is the one
    /// left already.
    pub fn watch(&self, cx: &mut Context<'_>) {
        if self.shared.is_none() {
            return;
        }
        let mut waker = self.slot.waker.lock().unwrap_or_else(|p| p.into_inner());
        if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *waker = Some(cx.waker().clone());
        }
    }

    /// Ready once the connection was chosen to close; registers `cx`'s waker otherwise. Poll
    /// it beside the idle wait (it stores no waiter in the caller's future).
    pub fn poll_evicted(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_evicted() {
            return Poll::Ready(());
        }
        self.watch(cx);
        // Chosen between the look and the waker: the chooser took no waker, so look again.
        if self.is_evicted() {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl Drop for Reclaim {
    fn drop(&mut self) {
        let Some(shared) = &self.shared else {
            return;
        };
        shared.take_idle(&self.slot);
        let mut t = shared.lock();
        t.entries[self.key] = None;
        t.free.push(self.key);
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

    /// A waiting accept loop hears of a connection that becomes idle, however many became
    /// idle while nobody waited.
    #[tokio::test]
    async fn became_idle_resolves_when_a_connection_becomes_idle_while_it_waits() {
        let r = Reclaimer::default();
        let early = r.register();
        early.set_idle(IdleClass::KeptAlive);
        early.set_busy();
        let late = r.register();
        let waiting = r.clone();
        let waiter = tokio::spawn(async move { waiting.became_idle().await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        late.set_idle(IdleClass::NoRequest);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(r.shared.waiting.load(Ordering::SeqCst), 0, "counted out");
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
