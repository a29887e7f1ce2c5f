//! `oxicorn connect ADDR`: a small line client, like `nc` but with clear errors. It sends what
//! arrives on stdin, line by line, prints what the server sends, and exits when either side
//! closes: at the end of stdin it half-closes (as `nc -N`) and prints the rest until the server
//! closes.
//!
//! It is a separate process, never the arbiter, so it may use a tokio runtime.
//!
//! `--timeout` bounds the waits for readiness, as CPython's `socket.settimeout` does: the wait
//! for the connection (including a Unix listener whose backlog is full) and any wait for the
//! server to take more of what we send (a server that stops reading). It never bounds the time
//! spent moving bytes that do move, nor how long the server may stay silent: a chat is
//! mostly silence. Failures are one line on stderr and exit
//! code 1: `connection refused`, `connection reset by peer`, `timed out after 3s`,
//! `no such socket: PATH`.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::config::show_duration;
use crate::net::{BindAddr, Stream};

/// The connect timeout when `--timeout` is not given.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Exit code for any failure.
pub const CONNECT_FAILED: i32 = 1;

/// Why a connection failed, worded for the person at the terminal.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConnectError {
    /// Nothing listens there (TCP RST to our SYN, or a Unix path with no listener).
    #[error("connection refused")]
    Refused,
    /// The server reset the connection.
    #[error("connection reset by peer")]
    Reset,
    /// No connection within `--timeout`.
    #[error("timed out after {}", show_duration(Some(*.0)))]
    TimedOut(Duration),
    /// A Unix socket path that does not exist.
    #[error("no such socket: {}", .0.display())]
    NoSocket(PathBuf),
    /// ADDR is not something to connect to.
    #[error("{0}")]
    BadAddress(String),
    /// Anything else the OS said.
    #[error("{0}")]
    Other(String),
}

fn classify(err: std::io::Error) -> ConnectError {
    use std::io::ErrorKind::*;
    match err.kind() {
        ConnectionRefused => ConnectError::Refused,
        ConnectionReset | ConnectionAborted | BrokenPipe => ConnectError::Reset,
        TimedOut => ConnectError::Other("the connection timed out".into()),
        _ => ConnectError::Other(err.to_string()),
    }
}

/// Runs the client; returns the process exit code. Errors are printed here, one line each.
pub fn run(addr: &str, timeout: Option<Duration>) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("oxicorn connect: cannot start: {err}");
            return CONNECT_FAILED;
        }
    };
    let timeout = timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    match rt.block_on(session(addr, timeout)) {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("oxicorn connect: {err}");
            CONNECT_FAILED
        }
    }
}

/// Connects to `addr` within `timeout`.
///
/// # Errors
/// A [`ConnectError`] saying why not.
pub async fn open(addr: &str, timeout: Duration) -> Result<Stream, ConnectError> {
    let target: BindAddr = addr
        .parse()
        .map_err(|e: crate::net::BindAddrError| ConnectError::BadAddress(e.to_string()))?;
    let attempt = async {
        match &target {
            BindAddr::Tcp(sa) => tokio::net::TcpStream::connect(sa)
                .await
                .map(|s| {
                    let _ = s.set_nodelay(true);
                    Stream::Tcp(s)
                })
                .map_err(classify),
            BindAddr::Unix(path) => loop {
                match tokio::net::UnixStream::connect(path).await {
                    Ok(s) => break Ok(Stream::Unix(s)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        break Err(ConnectError::NoSocket(path.clone()));
                    }
                    // A Unix listener with a full backlog refuses a non-blocking connect with
                    // EAGAIN: it is not ready yet, so wait (within the timeout) and retry.
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => break Err(classify(e)),
                }
            },
            BindAddr::Fd(_) | BindAddr::Systemd(_) => Err(ConnectError::BadAddress(format!(
                "{addr}: connect takes HOST:PORT, [IPV6]:PORT or unix:PATH"
            ))),
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(ConnectError::TimedOut(timeout)),
    }
}

async fn session(addr: &str, timeout: Duration) -> Result<(), ConnectError> {
    let stream = open(addr, timeout).await?;
    let (mut rd, mut wr) = tokio::io::split(stream);

    // Stdin is read by a plain thread (tokio's stdin needs the `io-std` feature and uses a
    // thread anyway). It ends with stdin; the process does not wait for it.
    let (line_tx, mut line_rx) = mpsc::channel::<Vec<u8>>(64);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut input = stdin.lock();
        loop {
            let mut line = Vec::new();
            match input.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if line_tx.blocking_send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });

    let mut buf = vec![0u8; 64 * 1024];
    let mut stdin_open = true;
    let mut out = std::io::stdout();
    loop {
        tokio::select! {
            n = rd.read(&mut buf) => {
                let n = n.map_err(classify)?;
                if n == 0 {
                    return Ok(());
                }
                // stdout closed (a pipe whose reader left): nothing more to do.
                if out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                    return Ok(());
                }
            }
            line = line_rx.recv(), if stdin_open => match line {
                Some(line) => send(&mut wr, &line, timeout).await?,
                None => {
                    stdin_open = false;
                    wr.shutdown().await.map_err(classify)?;
                }
            },
        }
    }
}

/// Writes all of `data`, failing only if one write makes no progress within `timeout`.
async fn send(
    wr: &mut (impl tokio::io::AsyncWrite + Unpin),
    mut data: &[u8],
    timeout: Duration,
) -> Result<(), ConnectError> {
    while !data.is_empty() {
        match tokio::time::timeout(timeout, wr.write(data)).await {
            Err(_) => return Err(ConnectError::TimedOut(timeout)),
            Ok(Err(err)) => return Err(classify(err)),
            Ok(Ok(0)) => return Err(ConnectError::Reset),
            Ok(Ok(n)) => data = &data[n..],
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_as_the_issue_words_them() {
        assert_eq!(ConnectError::Refused.to_string(), "connection refused");
        assert_eq!(ConnectError::Reset.to_string(), "connection reset by peer");
        assert_eq!(
            ConnectError::TimedOut(Duration::from_secs(3)).to_string(),
            "timed out after 3s"
        );
        assert_eq!(
            ConnectError::NoSocket("/tmp/x.sock".into()).to_string(),
            "no such socket: /tmp/x.sock"
        );
    }
}
