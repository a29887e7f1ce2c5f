//! `quote`: each line a client sends is answered with the current quote, then becomes the
//! current quote. One quote for the whole server: it lives on the [`Bus`] (in the hub), and
//! the exchange is one atomic swap there, so two clients on two workers never both get the
//! same old quote.
//!
//! Lines end in LF or CRLF; an unterminated last line before the client half-closes counts.
//! Replies end in CRLF. A line longer than `--max-line` gets an error line and the connection
//! is closed rather than resynchronised: a client that sends such a line is not speaking the
//! protocol, and skipping to the next newline would answer whatever half-line follows.

use std::fmt;
use std::io;

use tokio::io::AsyncWriteExt;

use super::lines::{Line, LineReader};
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
        let (rd, mut wr) = tokio::io::split(stream);
        let mut lines = LineReader::new(rd, self.max_line);
        loop {
            let line = tokio::select! {
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
