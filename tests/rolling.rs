//! Rolling replacement (issue 10): HUP, recycling by request count and by memory all start a
//! new worker, wait until it is ready, then retire an old one, never more than `--max-surge`
//! extra workers at once. Real binary, real signals; worker counts sampled from /proc.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::*;

/// Samples the arbiter's live children every few milliseconds until `stop`; returns the most
/// seen at once.
fn sample_children(pid: i32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut most = 0;
        let t = Instant::now();
        while !stop.load(Ordering::Relaxed) && t.elapsed() < Duration::from_secs(60) {
            most = most.max(children_of(pid).len());
            std::thread::sleep(Duration::from_millis(2));
        }
        most
    })
}

/// A client loop that records every failed echo until `stop`.
fn client_loop(
    addr: String,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut failures = Vec::new();
        let t = Instant::now();
        while !stop.load(Ordering::Relaxed) && t.elapsed() < Duration::from_secs(60) {
            match echo_once(&addr, b"roll?") {
                Ok(()) => {
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => failures.push(e.to_string()),
            }
        }
        failures
    })
}

/// Issue 10: "HUP with `--max-surge 1` on 4 workers never shows more than 5 workers."
#[test]
fn hup_with_max_surge_1_on_4_workers_never_shows_more_than_5() {
    let s = Oxicorn::start(&["echo", "-w", "4", "--max-surge", "1", "-b", "127.0.0.1:0"]);
    s.wait_ready(1, 4);
    let old = s.wait_children(4, SOON);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let sampler = sample_children(s.pid, stop.clone());
    let client = client_loop(s.tcp_addr().to_string(), stop.clone(), done.clone());
    assert!(eventually(SOON, || done.load(Ordering::Relaxed) > 10));

    let mark = s.mark();
    s.signal(Signal::SIGHUP);
    s.wait_for_lines_after(mark, "reload complete", 1, Duration::from_secs(30));
    let new = s.wait_children(4, SOON);
    let before = done.load(Ordering::Relaxed);
    assert!(eventually(SOON, || done.load(Ordering::Relaxed) > before + 10));
    stop.store(true, Ordering::Relaxed);
    let most = sampler.join().unwrap();
    let failures = client.join().unwrap();
    assert!(
        most <= 5,
        "{most} workers at once:\n{}",
        s.lines().join("\n")
    );
    assert!(failures.is_empty(), "failed during the roll: {failures:?}");
    assert!(new.iter().all(|p| !old.contains(p)), "{old:?} / {new:?}");

    // One at a time: each old worker is retired only after a new one booted, so the log
    // alternates "booted" and "retiring".
    let roll: Vec<String> = s.lines()[mark..]
        .iter()
        .filter(|l| l.contains(" booted") || l.contains("retiring "))
        .cloned()
        .collect();
    assert_eq!(roll.len(), 8, "{roll:#?}");
    for pair in roll.chunks(2) {
        assert!(pair[0].contains(" booted"), "{roll:#?}");
        assert!(pair[1].contains("its replacement is ready"), "{roll:#?}");
    }
}

/// A TERM in the middle of a roll stops everything cleanly: the arbiter stays responsive.
#[test]
fn term_in_the_middle_of_a_roll_finishes_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let trigger = dir.path().join("slow-boot");
    let mut s = Oxicorn::start_with(
        dir,
        &[
            "echo",
            "-w",
            "2",
            "--boot-timeout",
            "20",
            "-b",
            "127.0.0.1:0",
        ],
        &[("OXICORN_TEST_BOOT_FAILURE", trigger.to_str().unwrap())],
    );
    s.wait_ready(1, 2);
    // The new generation keeps failing to boot (the roll is stuck in its back-off)...
    std::fs::write(&trigger, "").unwrap();
    let mark = s.mark();
    s.signal(Signal::SIGHUP);
    s.wait_for_lines_after(mark, "failed to boot", 1, SOON);
    // ...when TERM arrives.
    s.signal(Signal::SIGTERM);
    let status = s.wait_exit(SOON).expect("stops");
    assert_eq!(status.code(), Some(0), "{}", s.lines().join("\n"));
    assert!(s.lines().iter().any(|l| l.contains("shutdown complete")));
}

/// Issue 10: "A new worker that does not become ready within `--boot-timeout` stops the roll
/// and the old generation stays."
#[test]
fn a_new_worker_not_ready_within_the_boot_timeout_stops_the_roll() {
    let dir = tempfile::tempdir().unwrap();
    let hang = dir.path().join("hang-boot");
    let s = Oxicorn::start_with(
        dir,
        &[
            "echo",
            "-w",
            "2",
            "--boot-timeout",
            "1",
            "-b",
            "127.0.0.1:0",
        ],
        &[("OXICORN_TEST_BOOT_HANG", hang.to_str().unwrap())],
    );
    s.wait_ready(1, 2);
    let before = s.wait_children(2, SOON);
    std::fs::write(&hang, "").unwrap();
    let mark = s.mark();
    s.signal(Signal::SIGHUP);
    let line = &s.wait_for_lines_after(mark, "reload failed", 1, SOON)[0];
    assert!(
        line.contains("not ready within --boot-timeout (1s)"),
        "{line}"
    );
    assert!(
        s.lines()[mark..]
            .iter()
            .any(|l| l.contains("was not ready within --boot-timeout (1s): killing"))
    );
    std::fs::remove_file(&hang).unwrap();
    assert_eq!(
        s.wait_children(2, SOON),
        before,
        "the old generation stayed"
    );
    echo_once(&s.tcp_addr().to_string(), b"old generation").unwrap();
}

/// Issue 10: "max-requests with jitter retires workers one surge at a time with the
/// replacement ready first (check the order in the log)."
#[test]
fn max_requests_with_jitter_replaces_workers_one_at_a_time_replacement_first() {
    let s = Oxicorn::start(&[
        "echo",
        "-w",
        "2",
        "--max-requests",
        "20",
        "--max-requests-jitter",
        "10",
        "-b",
        "127.0.0.1:0",
    ]);
    s.wait_ready(1, 2);
    let addr = s.tcp_addr().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let sampler = sample_children(s.pid, stop.clone());
    let client = client_loop(addr, stop.clone(), done.clone());
    // Enough connections that every worker passes 30 several times.
    s.wait_for_lines("retiring ", 4);
    stop.store(true, Ordering::Relaxed);
    let failures = client.join().unwrap();
    let most = sampler.join().unwrap();
    assert!(failures.is_empty(), "failed while recycling: {failures:?}");
    assert!(most <= 3, "{most} workers at once (2 + a surge of 1)");

    let lines = s.lines();
    let mut checked = 0;
    for (i, line) in lines.iter().enumerate() {
        let Some(rest) = line.split("worker ").nth(1) else {
            continue;
        };
        if !line.contains("requests (limit ") {
            continue;
        }
        // "worker PID (slot N) served K requests (limit L): replacing it"
        let pid = rest.split(' ').next().unwrap();
        let served: u64 = line
            .split("served ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let limit: u64 = line
            .split("(limit ")
            .nth(1)
            .unwrap()
            .split(')')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!((20..=30).contains(&limit), "{line}");
        assert!(served >= limit, "{line}");
        // Its retirement comes later, after a worker booted in between.
        let Some(retired_at) = lines[i..]
            .iter()
            .position(|l| l.contains(&format!("retiring worker {pid} ")))
        else {
            continue; // the client stopped before its replacement was ready
        };
        let between = &lines[i..i + retired_at];
        assert!(
            between.iter().any(|l| l.contains(" booted")),
            "retired before a replacement was ready:\n{}",
            between.join("\n")
        );
        assert!(lines[i + retired_at].contains("recycled"));
        checked += 1;
    }
    assert!(checked >= 2, "{}", lines.join("\n"));
}

/// Issue 10: "max-worker-memory": the arbiter reads each worker's RSS from /proc and replaces
/// one above the limit. Every worker's runtime is above 1 MiB, so with a 1 MiB limit each is
/// recycled in turn, deterministically; the service keeps answering throughout.
#[test]
fn max_worker_memory_replaces_a_worker_over_the_limit_after_its_replacement_is_ready() {
    let s = Oxicorn::start(&[
        "echo",
        "-w",
        "2",
        "--max-worker-memory",
        "1",
        "-b",
        "127.0.0.1:0",
    ]);
    s.wait_ready(1, 2);
    let line = s.wait_for_line("MiB (limit 1 MiB): replacing it");
    let pid = line
        .split("worker ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    let retired = s.wait_for_line(&format!("retiring worker {pid} "));
    let lines = s.lines();
    let from = lines.iter().position(|l| l == &line).unwrap();
    let to = lines.iter().position(|l| l == &retired).unwrap();
    assert!(
        lines[from..to].iter().any(|l| l.contains(" booted")),
        "{}",
        lines.join("\n")
    );
    for _ in 0..20 {
        echo_once(&s.tcp_addr().to_string(), b"still here").unwrap();
    }
}
