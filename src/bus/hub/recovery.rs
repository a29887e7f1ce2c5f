//! Recovery after a hub restart: the task that ends the recovery window once every worker
//! alive at the hub's fork has said hello or is gone (read from `/proc`), or at the cap.
//! The window itself (parked reserves, the awaited pids) is [`super::state::Hub`]'s.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::unistd::Pid;

use super::state::{Hub, RecoveryEnd};
use crate::sync::lock;

/// How often a restarted hub checks whether the workers it still waits for are alive. A worker
/// that dies is reaped by the arbiter, not by the hub, so nothing wakes the hub when it goes.
const RECOVERY_POLL: Duration = Duration::from_millis(100);

/// Added to `--timeout` for the recovery cap: the arbiter notices a silent worker on its next
/// pass (at most 1 s after the timeout), then the kill, the reap and one poll here.
const RECOVERY_MARGIN: Duration = Duration::from_secs(5);

/// The recovery cap when the heartbeat timeout is off: nothing then kills a worker that is
/// alive but never comes back, so the hub stops waiting for it after this long.
const RECOVERY_CAP_NO_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a restarted hub waits at most for the workers it was told about (see
/// [`super::HubBoot::workers`]) before it grants names again. Tied to the heartbeat timeout: a worker
/// silent that long is killed by the arbiter, and a dead worker is not waited for anyway; so
/// the cap only matters with the timeout off, or for a worker that beats but cannot reach the
/// hub.
pub fn recovery_cap(timeout: Option<Duration>) -> Duration {
    timeout.map_or(RECOVERY_CAP_NO_TIMEOUT, |t| t + RECOVERY_MARGIN)
}

/// Ends the recovery window once every awaited worker has said hello or is gone, or
/// `cap_after` after the start, whichever comes first. This task notices the gone ones and the
/// cap; [`Hub::handle`] counts the hellos (and this task then returns at its next poll).
pub(super) async fn recovery(hub: Arc<Mutex<Hub>>, arbiter: Pid, cap_after: Duration) {
    let cap = tokio::time::sleep(cap_after);
    tokio::pin!(cap);
    let mut poll = tokio::time::interval(RECOVERY_POLL);
    loop {
        tokio::select! {
            () = &mut cap => {
                lock(&hub).end_recovery(RecoveryEnd::Cap(cap_after));
                return;
            }
            _ = poll.tick() => {
                let awaited: Vec<u32> = {
                    let h = lock(&hub);
                    if !h.recovering {
                        return;
                    }
                    h.awaited.iter().copied().collect()
                };
                // Checked without the lock held: a few small procfs reads.
                let gone: Vec<u32> = awaited
                    .into_iter()
                    .filter(|&pid| !is_worker_alive(pid, arbiter))
                    .collect();
                lock(&hub).forget_workers(&gone);
            }
        }
    }
}

/// Whether `pid` is still a live child of the arbiter. Read from `/proc/PID/stat` rather than
/// `kill(pid, 0)`: a dead worker stays a zombie until the arbiter reaps it (on its next pass),
/// and `kill` succeeds on a zombie. The parent check catches a pid reused after the reap.
/// Procfs reads never wait on a disk, so this may run on the hub's only thread.
fn is_worker_alive(pid: u32, arbiter: Pid) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false; // no such process
    };
    // The command name is in parentheses and may contain anything: parse after the last ')'.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    let mut fields = rest.split_whitespace();
    let state = fields.next().unwrap_or("X");
    let ppid = fields.next().and_then(|p| p.parse::<i32>().ok());
    !matches!(state, "Z" | "X" | "x") && ppid == Some(arbiter.as_raw())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::hub::state::tests::{connect, frames, hub, reserve};
    use crate::bus::proto::Down;

    /// Two children of this process: one that lives (30 s at most, if a test fails before
    /// killing it) and one that exits at once.
    fn live_and_exiting_children() -> (std::process::Child, std::process::Child) {
        let live = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let exiting = std::process::Command::new("true").spawn().unwrap();
        (live, exiting)
    }

    #[test]
    fn only_a_live_child_of_the_arbiter_is_alive() {
        let arbiter = Pid::this();
        let (mut live, mut dead) = live_and_exiting_children();
        let zombie = dead.id();
        // Exited but not reaped: a zombie, which `kill(pid, 0)` would call alive.
        assert!(eventually_true(|| {
            std::fs::read_to_string(format!("/proc/{zombie}/stat")).is_ok_and(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
            })
        }));
        assert!(is_worker_alive(live.id(), arbiter));
        assert!(
            !is_worker_alive(live.id(), Pid::from_raw(1)),
            "not the arbiter's child"
        );
        assert!(!is_worker_alive(zombie, arbiter));
        dead.wait().unwrap();
        assert!(!is_worker_alive(zombie, arbiter), "reaped");
        live.kill().unwrap();
        live.wait().unwrap();
    }

    fn eventually_true(mut cond: impl FnMut() -> bool) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// The recovery task: a dead listed worker ends the wait at the next poll; a live silent
    /// one is waited for until the cap.
    #[tokio::test]
    async fn recovery_ends_when_listed_workers_are_gone_or_at_the_cap() {
        let arbiter = Pid::this();
        let (mut live, mut dead) = live_and_exiting_children();
        let gone = dead.id();
        dead.wait().unwrap();

        // Only the dead one listed: recovery ends at the first poll, long before the cap.
        let h = Arc::new(Mutex::new(hub(Some(&[gone]))));
        let started = std::time::Instant::now();
        recovery(Arc::clone(&h), arbiter, Duration::from_secs(30)).await;
        assert!(!lock(&h).recovering);
        assert!(started.elapsed() < Duration::from_secs(5));

        // A live one that never says hello: the cap ends it, and the parked reserve is
        // answered.
        let h = Arc::new(Mutex::new(hub(Some(&[gone, live.id()]))));
        let (n, mut rn, _) = connect(&mut lock(&h), 16);
        reserve(&mut lock(&h), n, 1, "x", 5);
        let cap = Duration::from_millis(300);
        let started = std::time::Instant::now();
        recovery(Arc::clone(&h), arbiter, cap).await;
        assert!(started.elapsed() >= cap);
        assert!(!lock(&h).recovering);
        assert!(lock(&h).awaited.is_empty());
        assert_eq!(frames(&mut rn), vec![Down::Reserved { req: 1, ok: true }]);
        live.kill().unwrap();
        live.wait().unwrap();
    }

    #[test]
    fn the_recovery_cap_follows_the_heartbeat_timeout() {
        assert_eq!(recovery_cap(None), RECOVERY_CAP_NO_TIMEOUT);
        assert_eq!(
            recovery_cap(Some(Duration::from_secs(30))),
            Duration::from_secs(30) + RECOVERY_MARGIN
        );
    }
}
