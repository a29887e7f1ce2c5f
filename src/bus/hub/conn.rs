//! Connection I/O: the hub's accept loop and one task per worker connection, which reads
//! frames into [`Hub::handle`] and writes that worker's queue out in batches. A worker that
//! stops reading so long that its queue fills is disconnected (it reconnects and
//! re-registers) rather than let it grow the hub's memory or slow the others.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::state::{Conn, Hub};
use crate::bus::proto::{FrameReader, FrameWriter, Up};
use crate::sync::lock;

/// Frames queued for one worker before it is considered stuck and disconnected.
pub(super) const HUB_QUEUE: usize = 64 * 1024;

/// Bytes queued for one worker before it is considered stuck and disconnected. Frames are
/// batches of up to 64 KiB (workers merge runs of publications), so a bound in frames alone
/// would let one stopped worker make the hub hold gigabytes.
pub(super) const HUB_QUEUE_BYTES: usize = 32 * 1024 * 1024;

/// Frames written to one worker in a single batch at most.
const BATCH: usize = 256;

/// Accepts worker connections for ever, one task each. Only this user's processes are served.
pub(super) async fn accept_loop(listener: UnixListener, hub: Arc<Mutex<Hub>>) {
    let uid = rustix::process::getuid().as_raw();
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                // Abstract sockets have no file permissions: only our own user may talk to
                // the hub.
                match stream.peer_cred() {
                    Ok(cred) if cred.uid() == uid => {
                        tokio::spawn(connection(Arc::clone(&hub), stream));
                    }
                    Ok(cred) => tracing::warn!(
                        uid = cred.uid(),
                        "hub refused a connection from another user"
                    ),
                    Err(err) => tracing::warn!(cause = %err, "hub cannot check a peer"),
                }
            }
            Err(err) => {
                tracing::warn!(cause = %err, "hub failed to accept; retrying in 100ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Serves one worker until it disconnects, sends garbage, or is kicked.
async fn connection(hub: Arc<Mutex<Hub>>, stream: UnixStream) {
    let (tx, mut rx) = mpsc::channel::<Bytes>(HUB_QUEUE);
    let kick = CancellationToken::new();
    let queued = Arc::new(AtomicUsize::new(0));
    let id = {
        let mut h = lock(&hub);
        h.next_conn += 1;
        let id = h.next_conn;
        h.conns.insert(
            id,
            Conn {
                tx,
                kick: kick.clone(),
                worker: 0,
                queued: Arc::clone(&queued),
                limit: HUB_QUEUE_BYTES,
            },
        );
        id
    };
    let (rd, wr) = stream.into_split();

    let reader = async {
        let mut frames = FrameReader::new(rd);
        while let Some(frame) = frames.next().await? {
            let msg = Up::decode(frame)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            lock(&hub).handle(id, msg);
        }
        Ok::<(), std::io::Error>(())
    };
    let writer = async {
        let mut frames = FrameWriter::new(wr);
        let mut batch = Vec::with_capacity(BATCH);
        while rx.recv_many(&mut batch, BATCH).await > 0 {
            let taken: usize = batch.iter().map(Bytes::len).sum();
            for frame in batch.drain(..) {
                frames.feed(frame)?;
            }
            queued.fetch_sub(taken, Ordering::Relaxed);
            frames.flush().await?;
        }
        Ok::<(), std::io::Error>(())
    };

    let result = tokio::select! {
        r = reader => r,
        r = writer => r,
        _ = kick.cancelled() => Ok(()),
    };
    let worker = lock(&hub).conns.get(&id).map_or(0, |c| c.worker);
    match result {
        // A worker that exits (a reload, TTOU, a crash the arbiter reports) closes its end
        // while the hub may still be writing to it: that is a departure, not a fault.
        Err(err)
            if matches!(
                err.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            tracing::debug!(worker, cause = %err, "worker left the bus");
        }
        Err(err) => tracing::warn!(worker, cause = %err, "bus connection failed"),
        Ok(()) => tracing::debug!(worker, "worker left the bus"),
    }
    lock(&hub).disconnect(id);
}
