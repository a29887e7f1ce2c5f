//! `echo`: bytes in, the same bytes out.
//!
//! Memory is bounded by one buffer per connection: the next read waits until the previous chunk
//! is written, so a client that sends but never reads fills its own socket buffers and is then
//! simply not read from (TCP back-pressure) until the idle timeout closes it.
//!
//! When its worker retires with hand-over, an echo connection is offered to a newer worker
//! between a write and the next read (nothing of the stream is then held here), and carries
//! on there; if no worker takes it, it echoes on here until the worker's graceful timeout.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::handoff::{Parcel, stream_fd};
use super::{ConnContext, idle};
use crate::net::Stream;

/// Bytes read (and then written) at a time, per connection.
pub const ECHO_BUFFER: usize = 16 * 1024;

/// Echoes until the client half-closes or goes silent for the idle timeout. The client's
/// half-close is passed on (our write side is shut after the last byte), as `nc -N` expects.
///
/// # Errors
/// I/O errors and the idle timeout; both end this connection only.
pub async fn serve(mut stream: Stream, ctx: &ConnContext) -> io::Result<()> {
    // Allocated once the client first sends: a connection that only sits there costs no buffer.
    let mut buf = Vec::new();
    // Set once the connection was offered to a newer worker and stayed here.
    let mut kept = false;
    loop {
        if buf.is_empty() {
            tokio::select! {
                biased;
                () = ctx.retire.requested(), if !kept => {
                    if hand_over(&stream, ctx).await {
                        return Ok(());
                    }
                    kept = true;
                    continue;
                }
                r = idle(ctx.idle_timeout, stream.readable()) => r?,
            }
            buf = vec![0u8; ECHO_BUFFER];
        }
        let n = tokio::select! {
            biased;
            () = ctx.retire.requested(), if !kept => {
                if hand_over(&stream, ctx).await {
                    return Ok(());
                }
                kept = true;
                continue;
            }
            r = idle(ctx.idle_timeout, stream.read(&mut buf)) => r?,
        };
        if n == 0 {
            return stream.shutdown().await;
        }
        idle(ctx.idle_timeout, stream.write_all(&buf[..n])).await?;
        ctx.metrics.bytes_out(n as u64);
    }
}

/// Offers the connection to a newer worker; true if one took it (this worker must then drop
/// it without touching it: its own descriptor closes, the connection lives on there).
async fn hand_over(stream: &Stream, ctx: &ConnContext) -> bool {
    match ctx.retire.offer(stream_fd(stream), &Parcel::Echo).await {
        Ok(_) => true,
        Err(err) => {
            tracing::debug!(peer = %ctx.peer, cause = %err, "echo connection stays");
            false
        }
    }
}
