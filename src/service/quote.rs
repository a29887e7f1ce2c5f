//! `quote`: each line a client sends is answered with the current quote, then becomes the
//! current quote. One quote for the whole server: it lives on the [`Bus`] (in the hub), and
//! the exchange is one atomic swap there, so two clients on two workers never both get the
//! same old quote.
//!
//! Lines end in LF or CRLF; an unterminated last line before the client half-closes counts.
//! Replies end in CRLF. A line longer than `--max-line` gets an error line and the connection
//! is closed rather than resynchronised: a client that sends such a line is not speaking the
//! protocol, and skipping to the next newline would answer whatever half-line follows.
//!
//! When its worker retires with hand-over, a quote connection is offered to a newer worker
//! between two lines, with what its reader had read beyond the last one
//! ([`super::handoff`]); if no worker takes it, it closes as before hand-overs existed.

use std::fmt;
use std::io;

use tokio::io::AsyncWriteExt;

use super::handoff::{Parcel, stream_fd};
use super::lines::{Line, LineReader, ReaderState};
use super::{ConnContext, idle};
use crate::bus::{Bus, BusError};
use crate::net::Stream;

/// The bus key of the quote.
pub const KEY: &str = "quote";

/// The quote service of one worker.
pub struct Quote {
    bus: Bus,
    max_line: usize,
}

impl fmt::Debug for Quote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Quote")
            .field("max_line", &self.max_line)
            .finish_non_exhaustive()
    }
}

impl Quote {
    /// The service for one worker. `initial` is the quote served until a client sends one:
    /// every worker offers it to the bus, which keeps the first and never lets it replace a
    /// quote a client sent ([`Bus::set_if_absent`]).
    pub fn new(bus: Bus, max_line: usize, initial: &str) -> Quote {
        bus.set_if_absent(KEY, bytes::Bytes::copy_from_slice(initial.as_bytes()));
        Quote { bus, max_line }
    }

    /// Serves one connection: a swap per line, until the client closes or goes idle.
    ///
    /// # Errors
    /// I/O errors and the idle timeout; both end this connection only.
    pub async fn serve(&self, stream: Stream, ctx: &ConnContext) -> io::Result<()> {
        tracing::debug!(peer = %ctx.peer, "quote connection");
        let fd = stream_fd(&stream);
        let (rd, wr) = tokio::io::split(stream);
        let lines = LineReader::new(rd, self.max_line);
        self.run(fd, lines, wr, ctx).await
    }

    /// Carries on a connection another worker handed over, from its reader's `state`.
    ///
    /// # Errors
    /// As [`Quote::serve`].
    pub async fn carry_on(
        &self,
        stream: Stream,
        state: ReaderState,
        ctx: &ConnContext,
    ) -> io::Result<()> {
        tracing::debug!(peer = %ctx.peer, "quote connection taken over");
        let fd = stream_fd(&stream);
        let (rd, wr) = tokio::io::split(stream);
        let lines = LineReader::resume(rd, self.max_line, state);
        self.run(fd, lines, wr, ctx).await
    }

    async fn run(
        &self,
        fd: std::os::fd::RawFd,
        mut lines: LineReader<tokio::io::ReadHalf<Stream>>,
        mut wr: tokio::io::WriteHalf<Stream>,
        ctx: &ConnContext,
    ) -> io::Result<()> {
        let mut kept = false;
        loop {
            let line = tokio::select! {
                biased;
                () = ctx.retire.requested(), if !kept => {
                    let parcel = Parcel::Quote { reader: lines.state() };
                    match ctx.retire.offer(fd, &parcel).await {
                        // Another worker reads and writes from here on: this one lets go
                        // without shutting anything.
                        Ok(_) => return Ok(()),
                        Err(err) => {
                            tracing::debug!(peer = %ctx.peer, cause = %err, "quote connection stays");
                            kept = true;
                            continue;
                        }
                    }
                }
                l = idle(ctx.idle_timeout, lines.next()) => l?,
                () = ctx.stop.cancelled() => break,
            };
            match line {
                None => break,
                // Only telnet readers report these; quote's takes bytes as they come.
                Some(Line::TimingMark | Line::Negotiation(_)) => continue,
                Some(Line::TooLong) => {
                    let msg = format!(
                        "* line too long (more than {} bytes): closing\r\n",
                        self.max_line
                    );
                    idle(ctx.idle_timeout, wr.write_all(msg.as_bytes())).await?;
                    break;
                }
                Some(Line::Text(new)) => {
                    let reply = match self.bus.swap(KEY, new).await {
                        Ok(old) => {
                            let mut out = Vec::with_capacity(old.len() + 2);
                            out.extend_from_slice(&old);
                            out.extend_from_slice(b"\r\n");
                            out
                        }
                        Err(BusError::Unavailable) => {
                            b"* the quote is unavailable right now; try again\r\n".to_vec()
                        }
                    };
                    idle(ctx.idle_timeout, wr.write_all(&reply)).await?;
                }
            }
        }
        wr.shutdown().await
    }
}
