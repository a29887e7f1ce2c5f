//! A line client for the line services' tests (`chat`, `quote`): reads CRLF-terminated lines
//! with deadlines, and finds which worker serves a connection from the debug log.
#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::support::{Oxicorn, SOON};

/// A TCP client of a line service.
pub struct LineClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl LineClient {
    pub fn connect(addr: SocketAddr) -> LineClient {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        LineClient::from_stream(stream)
    }

    pub fn from_stream(stream: TcpStream) -> LineClient {
        stream.set_write_timeout(Some(SOON)).unwrap();
        LineClient {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn local_port(&self) -> u16 {
        self.stream.local_addr().unwrap().port()
    }

    pub fn send(&mut self, data: &[u8]) {
        self.stream.write_all(data).expect("send");
    }

    /// The next CRLF-terminated line, without its CRLF, as raw bytes; `None` at EOF or when
    /// `within` passes.
    pub fn try_raw_line(&mut self, within: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf[..i].to_vec();
                self.buf.drain(..i + 2);
                assert!(
                    !line.contains(&b'\n'),
                    "a bare LF inside a line: {:?}",
                    String::from_utf8_lossy(&line)
                );
                return Some(line);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            self.stream.set_read_timeout(Some(deadline - now)).unwrap();
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return None;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
    }

    /// The next line, as text (lossy).
    pub fn try_line(&mut self, within: Duration) -> Option<String> {
        self.try_raw_line(within)
            .map(|l| String::from_utf8_lossy(&l).into_owned())
    }

    /// The next line; panics at EOF or after [`SOON`].
    pub fn line(&mut self) -> String {
        match self.try_line(SOON) {
            Some(l) => l,
            None => panic!(
                "no line within {SOON:?} (port {}); unread: {:?}",
                self.local_port(),
                String::from_utf8_lossy(&self.buf)
            ),
        }
    }

    /// Asserts the next line.
    pub fn expect(&mut self, want: &str) {
        let got = self.line();
        assert_eq!(got, want, "port {}", self.local_port());
    }

    /// Asserts the next line starts with `prefix`; returns it.
    pub fn expect_prefix(&mut self, prefix: &str) -> String {
        let got = self.line();
        assert!(
            got.starts_with(prefix),
            "expected a line starting with {prefix:?}, got {got:?} (port {})",
            self.local_port()
        );
        got
    }

    /// Asserts nothing more arrives within `within` (and the connection is still open).
    pub fn expect_quiet(&mut self, within: Duration) {
        if let Some(l) = self.try_line(within) {
            panic!("unexpected line {l:?} (port {})", self.local_port());
        }
        assert!(self.buf.is_empty(), "partial data: {:?}", self.buf);
    }

    /// Reads until the server closes (EOF or reset), within [`SOON`]; returns what came.
    pub fn read_to_close(&mut self) -> Vec<u8> {
        let deadline = Instant::now() + SOON;
        let mut out = std::mem::take(&mut self.buf);
        loop {
            let now = Instant::now();
            assert!(
                now < deadline,
                "the server did not close (port {})",
                self.local_port()
            );
            self.stream.set_read_timeout(Some(deadline - now)).unwrap();
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return out,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return out, // reset: closed too
            }
        }
    }

    pub fn shutdown_write(&self) {
        self.stream.shutdown(std::net::Shutdown::Write).unwrap();
    }
}

/// The pid in a log line (`TIME [PID] LEVEL ...`).
pub fn pid_of_line(line: &str) -> i32 {
    line.split('[')
        .nth(1)
        .and_then(|r| r.split(']').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"))
}

/// The worker serving the connection `client` (from the debug line the service logs when it
/// takes a connection: `... connection peer=127.0.0.1:PORT`).
pub fn worker_of(s: &Oxicorn, client: &LineClient) -> i32 {
    let pattern = format!(" connection peer=127.0.0.1:{}", client.local_port());
    // The port ends the line or is followed by another field, never by another digit.
    let matches = |l: &String| {
        l.split_once(&pattern)
            .is_some_and(|(_, rest)| rest.is_empty() || rest.starts_with(' '))
    };
    if !crate::support::eventually(SOON, || s.lines().iter().any(matches)) {
        panic!("no line with {pattern:?}; log:\n{}", s.lines().join("\n"));
    }
    pid_of_line(s.lines().iter().find(|l| matches(l)).expect("a line"))
}

/// The live hub's pid: from the last "hub PID ready" line.
pub fn hub_pid(s: &Oxicorn) -> i32 {
    let ready = |l: &String| l.contains("] INFO hub ") && l.ends_with(" ready");
    if !crate::support::eventually(SOON, || s.lines().iter().any(ready)) {
        panic!("no hub ready line; log:\n{}", s.lines().join("\n"));
    }
    let lines = s.lines();
    let line = lines.iter().rev().find(|l| ready(l)).expect("a ready line");
    line.split("INFO hub ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|p| p.parse().ok())
        .expect("hub pid")
}

/// Starts `service` (chat or quote) with `workers` workers holding one connection each (so
/// every open client is on its own worker), debug logs (to tell which worker serves whom),
/// and waits for the workers and the hub.
pub fn start_line_service(service: &str, workers: usize, extra: &[&str]) -> (Oxicorn, SocketAddr) {
    let w = workers.to_string();
    let mut args = vec![
        service,
        "-w",
        &w,
        "--worker-connections",
        "1",
        "-b",
        "127.0.0.1:0",
        "--log-level",
        "debug",
    ];
    args.extend_from_slice(extra);
    let s = Oxicorn::start(&args);
    s.wait_ready(1, workers);
    hub_pid(&s);
    let addr = s.tcp_addr();
    (s, addr)
}

/// What a terminal does on Ctrl-C: SIGINT to the foreground process group (the tests start
/// the arbiter as the leader of its own group).
pub fn ctrl_c(s: &Oxicorn) {
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(s.pid),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("killpg");
}

/// No line of the log is a warning or an error.
pub fn assert_no_warnings(s: &Oxicorn) {
    let lines = s.lines();
    let bad: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("] WARN ") || l.contains("] ERROR "))
        .collect();
    assert!(
        bad.is_empty(),
        "warnings: {bad:#?}\nlog:\n{}",
        lines.join("\n")
    );
}
