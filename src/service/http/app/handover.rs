//! Handing the CPU over every few requests: a worker thread that answers
//! [`REQUESTS_PER_TURN`] requests in a row, without a [`BREAK`] between two of them, then
//! calls `sched_yield(2)`, so that another task waiting for its CPU (a sibling worker, the
//! client, anything) runs now rather than when the kernel's time slice ends.
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
//! Why a break starts the turn over: a thread that went idle (it waited for bytes) or was
//! taken off its CPU between two requests has just let others run; a yield soon after only
//! adds a context switch. Counting every 32 requests regardless, a worker under wrk -c64 was
//! switched out involuntarily 0.11-0.14 times per request; with the count started over after
//! a pause of [`BREAK`], 0.07 (/proc/PID/status, 4 s wrk runs, 2026-11-30), and
//! benches/app.sh's fixed-rate p99 did not grow.
//!
//! What it costs: under EEVDF (Linux 6.6+) a yield only moves this thread's deadline one slice
//! later, so it runs later only behind a task that is owed CPU time anyway (its share is
//! unchanged), and with nothing else runnable on its CPU the call returns at once (~0.3 us,
//! once per 32 requests). Requests that cost more than the kernel's slice see no difference.
//! Per request: a thread-local read and write and one comparison of two instants (the end's
//! instant is the one the request path reads anyway).
//!
//! This module owns one per-thread counter and the yield it triggers; it touches nothing else.

use std::cell::Cell;
use std::time::Duration;

use tokio::time::Instant;

/// Requests a thread answers without a break between two hand-overs: about a quarter of a
/// millisecond of hello-world requests (~7 us each), well under the kernel's base slice (0.75
/// ms times 1 + log2 of the CPUs). 8 cost ~15% of the requests/s; 64 gave a little less of the
/// gain (wrk -c64 against 2 workers, 2026-11-30). Measured again once the request path had
/// become cheaper (benches/app.sh, 64 and 32 in the same rounds, two runs): 64 gave +2.7% and
/// -0.4% requests/s, +2% and -2.6% per CPU-second, and a fixed-rate p99 at 80% equal in one
/// run and twice 32's in the other; 128 had made that p99 worse than axum::serve's.
pub(crate) const REQUESTS_PER_TURN: u32 = 32;

/// A pause between two answered requests at least this long means the thread was off its CPU
/// meanwhile (it waited for bytes, or the kernel ran something else): its turn starts over.
/// Back to back, hello-world requests end ~7 us apart, and a wake-up from `epoll_wait` alone
/// takes longer than that. Requests that cost 40 us of CPU or more each look like breaks, so
/// their thread never yields: 32 of them (1.3 ms) would have come close to the kernel's slice
/// (1.5 ms on 2 CPUs) anyway.
pub(crate) const BREAK: Duration = Duration::from_micros(40);

/// The current turn of a thread: requests answered in it, and when the last one was.
#[derive(Clone, Copy)]
struct Turn {
    answered: u32,
    last: Instant,
}

thread_local! {
    /// This thread's turn; `None` before its first answered request.
    static CURRENT: Cell<Option<Turn>> = const { Cell::new(None) };
}

/// Counts one request answered on this thread at `now`, and hands the CPU over
/// (`std::thread::yield_now`, which is `sched_yield(2)` on Linux) when the thread has answered
/// [`REQUESTS_PER_TURN`] requests without a [`BREAK`]. Call it after the request's own
/// bookkeeping: the yield blocks this thread, and with it the worker's runtime, for as long as
/// the kernel runs something else.
pub(crate) fn request_answered(now: Instant) {
    if CURRENT.with(|turn| turn_ends(turn, now)) {
        std::thread::yield_now();
    }
}

/// Counts one request answered at `now` in `turn`; true when it ends the turn (the next
/// begins after it).
fn turn_ends(turn: &Cell<Option<Turn>>, now: Instant) -> bool {
    let answered = match turn.get() {
        Some(t) if now.saturating_duration_since(t.last) < BREAK => t.answered + 1,
        _ => 1,
    };
    let ends = answered >= REQUESTS_PER_TURN;
    turn.set(Some(Turn {
        answered: if ends { 0 } else { answered },
        last: now,
    }));
    ends
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Requests answered back to back end a turn every REQUESTS_PER_TURN, and only those.
    #[test]
    fn a_turn_ends_every_requests_per_turn_requests_without_a_break() {
        let turn = Cell::new(None);
        let t0 = Instant::now();
        let ends: Vec<u32> = (1..=3 * REQUESTS_PER_TURN)
            .filter(|&i| turn_ends(&turn, t0 + BREAK / 2 * i))
            .collect();
        assert_eq!(
            ends,
            vec![
                REQUESTS_PER_TURN,
                2 * REQUESTS_PER_TURN,
                3 * REQUESTS_PER_TURN
            ]
        );
    }

    /// A break (the thread waited for bytes, or was off its CPU) starts the turn over: a
    /// thread that is often idle never yields.
    #[test]
    fn a_break_starts_the_turn_over() {
        let turn = Cell::new(None);
        let mut at = Instant::now();
        let mut ends = 0;
        for _ in 0..4 {
            for _ in 1..REQUESTS_PER_TURN {
                ends += u32::from(turn_ends(&turn, at));
                at += BREAK / 2;
            }
            at += BREAK;
        }
        assert_eq!(ends, 0);
        // One pause just short of a break does not start it over.
        let turn = Cell::new(None);
        let ends = (1..=REQUESTS_PER_TURN)
            .filter(|&i| turn_ends(&turn, at + BREAK * i - Duration::from_micros(1) * i))
            .count();
        assert_eq!(ends, 1);
    }

    /// The hand-over itself returns (a yield with nothing else runnable is a no-op).
    #[test]
    fn handing_over_returns() {
        let t0 = Instant::now();
        for i in 0..=REQUESTS_PER_TURN {
            request_answered(t0 + BREAK / 4 * i);
        }
    }
}
