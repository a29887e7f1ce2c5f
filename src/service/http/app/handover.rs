//! Handing the CPU over every few requests: a worker thread that answers
//! [`REQUESTS_PER_TURN`] requests in a row then calls `sched_yield(2)`, so that another task
//! waiting for its CPU (a sibling worker, the client, anything) runs now rather than when the
//! kernel's time slice ends.
//!
//! Why: each worker serves all of its connections on one thread and no other process can
//! pick them up, so while the kernel leaves a worker waiting for its CPU, every connection it
//! holds waits with it (tokio's multi-thread runtime, which `axum::serve` uses, lets the other
//! thread take them). Under a load that keeps the cores busy (the client on the same 2 cores,
//! benches/app.sh) a worker ran whole slices while its sibling's 32 connections waited. With
//! wrk -c64 on 2 workers the p50 was 0.15-0.25 ms, half the mean (64 / requests/s = 0.5 ms),
//! and the p99 7-8 ms against axum's 4.5-5: most requests came back at once, those of the
//! worker left waiting took a slice. One worker against one axum thread had the lower p99,
//! the split of connections between the workers did not track it (32/32 gave 6.9 ms), and
//! tokio's `event_interval` changed nothing. Yielding every 32 requests made the p99 1-3 ms
//! at the same requests/s and CPU per request (measured 2026-11-30).
//!
//! What it costs: under EEVDF (Linux 6.6+) a yield only moves this thread's deadline one slice
//! later, so it runs later only behind a task that is owed CPU time anyway (its share is
//! unchanged), and with nothing else runnable on its CPU the call returns at once (~0.3 us,
//! once per 32 requests). Requests that cost more than the kernel's slice see no difference.
//!
//! This module owns one per-thread counter and the yield it triggers; it touches nothing else.

use std::cell::Cell;

/// Requests a thread answers between two hand-overs: about a quarter of a millisecond of
/// hello-world requests (~7 us each), well under the kernel's base slice (0.75 ms times
/// 1 + log2 of the CPUs). 8 cost ~15% of the requests/s; 64 gave a little less of the gain
/// (wrk -c64 against 2 workers, 2026-11-30). Measured again once the request path had become
/// cheaper (benches/app.sh, 64 and 32 in the same rounds, two runs): 64 gave +2.7% and
/// -0.4% requests/s, +2% and -2.6% per CPU-second, and a fixed-rate p99 at 80% equal in one
/// run and twice 32's in the other; 128 had made that p99 worse than axum::serve's.
pub(crate) const REQUESTS_PER_TURN: u32 = 32;

thread_local! {
    /// Requests answered on this thread since its last hand-over.
    static ANSWERED: Cell<u32> = const { Cell::new(0) };
}

/// Counts one answered request on this thread, and every [`REQUESTS_PER_TURN`]th hands the
/// CPU over (`std::thread::yield_now`, which is `sched_yield(2)` on Linux). Call it after the
/// request's own bookkeeping: the yield blocks this thread, and with it the worker's runtime,
/// for as long as the kernel runs something else.
pub(crate) fn request_answered() {
    if ANSWERED.with(turn_ends) {
        std::thread::yield_now();
    }
}

/// Counts one request in `answered`; true when it ends a turn (and the count starts over).
fn turn_ends(answered: &Cell<u32>) -> bool {
    let n = answered.get() + 1;
    if n >= REQUESTS_PER_TURN {
        answered.set(0);
        true
    } else {
        answered.set(n);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every REQUESTS_PER_TURN-th request ends a turn, and only those.
    #[test]
    fn a_turn_ends_every_requests_per_turn_requests() {
        let answered = Cell::new(0);
        let ends: Vec<u32> = (1..=3 * REQUESTS_PER_TURN)
            .filter(|_| turn_ends(&answered))
            .collect();
        assert_eq!(
            ends,
            vec![
                REQUESTS_PER_TURN,
                2 * REQUESTS_PER_TURN,
                3 * REQUESTS_PER_TURN
            ]
        );
        assert_eq!(answered.get(), 0);
    }

    /// The hand-over itself returns (a yield with nothing else runnable is a no-op).
    #[test]
    fn handing_over_returns() {
        for _ in 0..=REQUESTS_PER_TURN {
            request_answered();
        }
    }
}
