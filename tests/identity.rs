//! Who the processes run as (issue 11; gunicorn's `--user`, `--group`, `--umask`): started as
//! root, oxicorn binds, then runs workers and the hub as the given user; it refuses to run
//! workers as root without `--user` unless `--allow-root` is given; log files stay usable.
//! These need root (CI runs as root); elsewhere they say so and skip.

mod support;

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use support::*;

fn root() -> bool {
    if nix::unistd::geteuid().is_root() {
        true
    } else {
        eprintln!("skipped: not root");
        false
    }
}

/// The real uid of `pid`, from /proc.
fn uid_of(pid: i32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .unwrap()
}

#[test]
fn root_without_user_is_refused_with_the_way_out() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["echo", "-b", "127.0.0.1:0"])
        .env_remove("OXICORN_ALLOW_ROOT")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to run workers as root")
            && err.contains("--user")
            && err.contains("--allow-root"),
        "{err}"
    );
    assert!(!err.contains("listening"), "{err}");
}

#[test]
fn workers_and_the_hub_run_as_the_user_and_keep_their_logs() {
    if !root() {
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("a nobody user");
    let dir = tempfile::tempdir().unwrap();
    // The served directory and the log files' directory must be readable by the user.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.path().join("a.txt"), "A").unwrap();
    write_file(
        dir.path(),
        "two.toml",
        "workers = 2\n[[service]]\nkind = \"static\"\nbind = \"unix:web.sock\"\n\
         access_logfile = \"access.log\"\n[[service]]\nkind = \"chat\"\nbind = \"127.0.0.1:0\"\n",
    );
    let s = Oxicorn::start_with(
        dir,
        &["-c", "two.toml", "--user", "nobody", "--umask", "077"],
        &[],
    );
    s.wait_ready(2, 2);
    let hub: i32 = s
        .wait_for_line(" ready")
        .split("hub ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap();
    assert_eq!(uid_of(s.pid), 0, "the arbiter stays root");
    for pid in s.booted_pids().into_iter().chain([hub]) {
        assert_eq!(uid_of(pid), nobody.uid.as_raw(), "child {pid}");
    }
    // The umask applied to the socket file the arbiter bound.
    let sock = s.path("web.sock");
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o700
    );
    // Served as nobody, logged to a file nobody owns.
    let mut c = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    c.write_all(b"GET /a.txt HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let log = s.path("access.log");
    assert_eq!(std::fs::metadata(&log).unwrap().uid(), nobody.uid.as_raw());
    assert!(eventually(SOON, || std::fs::read_to_string(&log)
        .is_ok_and(|t| t.contains("GET /a.txt"))));
}

#[test]
fn unknown_users_and_bad_masks_are_configuration_errors() {
    let dir = tempfile::tempdir().unwrap();
    for (args, says) in [
        (
            &["--user", "no-such-user-here", "--check-config"][..],
            "no user",
        ),
        (
            &["--group", "no-such-group-here", "--check-config"],
            "no group",
        ),
        (&["--umask", "99", "--check-config"], "not an octal mode"),
    ] {
        let out = Command::new(BIN)
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(says),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
