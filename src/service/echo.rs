//! `echo`: bytes in, the same bytes out.
//!
//! Memory is bounded by one buffer per connection: the next read waits until the previous chunk
//! is written, so a client that sends but never reads fills its own socket buffers and is then
//! simply not read from (TCP back-pressure) until the idle timeout closes it.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
    loop {
        if buf.is_empty() {
            idle(ctx.idle_timeout, stream.readable()).await?;
            buf = vec![0u8; ECHO_BUFFER];
        }
        let n = idle(ctx.idle_timeout, stream.read(&mut buf)).await?;
        if n == 0 {
            return stream.shutdown().await;
        }
        idle(ctx.idle_timeout, stream.write_all(&buf[..n])).await?;
        ctx.metrics.bytes_out(n as u64);
    }
}
