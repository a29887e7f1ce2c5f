//! What a service reports about its traffic, without knowing where it is kept.
//!
//! Today the numbers land in the worker's scoreboard slot (shared memory the arbiter reads);
//! a service only sees [`Metrics`], so counters and histograms can move (per-status counts,
//! latency buckets, a Prometheus endpoint) without touching a service. Owns no storage of its
//! own; never blocks, never allocates.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::scoreboard::Slot;

/// The metrics facade handed to each connection in its
/// [`ConnContext`](super::ConnContext). Cheap to copy: a reference to the worker's slot.
#[derive(Debug, Clone, Copy)]
pub struct Metrics {
    /// The worker's scoreboard slot; the arbiter sums slots for status.
    slot: &'static Slot,
}

impl Metrics {
    /// Reports nowhere anyone reads: for a service run outside a worker (tests, a program
    /// that drives a service itself).
    pub fn detached() -> Metrics {
        static NOWHERE: Slot = Slot::new();
        Metrics { slot: &NOWHERE }
    }

    /// Reports into `slot`, the worker's own scoreboard slot.
    pub fn new(slot: &'static Slot) -> Metrics {
        Metrics { slot }
    }

    /// `n` bytes were written to a client (heads and bodies alike).
    pub fn bytes_out(&self, n: u64) {
        self.slot.bytes_out.fetch_add(n, Ordering::Relaxed);
    }

    /// One request was answered with `status` after `elapsed` (from a complete head to the
    /// last byte handed to the kernel). Requests refused before a head was read (400, 408,
    /// 414, 431 on the head itself) are not requests here, as in gunicorn's request count.
    ///
    /// The slot keeps only the count for now (it is asserted at 64 bytes); status and time
    /// are part of the contract so that per-status counters and latency buckets can be added
    /// to the scoreboard without changing any service.
    pub fn request(&self, status: http::StatusCode, elapsed: Duration) {
        let _ = (status, elapsed);
        self.slot.requests.fetch_add(1, Ordering::Relaxed);
    }
}
