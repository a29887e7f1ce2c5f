//! The worker's graceful stop, as an application sees it: [`Shutdown`], a handle a handler,
//! a stream or a background task awaits (or checks) to end what would otherwise run until
//! the graceful deadline cuts it: server-sent events, WebSockets, long polls.
//!
//! Owns the one stop token of this process. The worker ([`crate::worker`]) cancels it when
//! its graceful stop begins, and hands the same token to its accept loop and its connections
//! (it is the `stop` of every `ConnContext`). Nothing else cancels it, and no code here knows
//! about signals, the arbiter or the config.
//!
//! Why a process-wide handle and not a request extension: a worker is one process with one
//! stop, so every task in it may ask, including a factory's background task that never sees a
//! request; and an extension would be cloned into every request (a box and a reference count
//! each), a cost every request would pay for the few that stream. The pattern is tokio-util's
//! `CancellationToken` (one token, cloned into the tasks that must end), as axum's
//! `with_graceful_shutdown` examples use it.

use std::future::Future;
use std::sync::OnceLock;

use tokio_util::sync::CancellationToken;

/// This process's stop token: made by whichever comes first, the worker taking it as its own
/// stop ([`worker_stop`]) or the app asking for a handle ([`Shutdown::current`]), so both hold
/// the same one whatever the order. A handle taken before the fork (in `main`, before
/// [`crate::Server::run`]) is a copy of the arbiter's token, which nobody cancels there; in
/// each forked worker the copy is that worker's own, cancelled by it alone.
static STOP: OnceLock<CancellationToken> = OnceLock::new();

fn token() -> &'static CancellationToken {
    STOP.get_or_init(CancellationToken::new)
}

/// The token a worker cancels to begin its graceful stop: this process's, which every
/// [`Shutdown`] handle watches. Called once by the worker, after the fork.
pub(crate) fn worker_stop() -> CancellationToken {
    token().clone()
}

/// A handle on this worker's graceful stop: [`stopped`](Shutdown::stopped) completes, and
/// [`is_stopping`](Shutdown::is_stopping) turns true, when the worker begins to stop, so that
/// the application can end its long-lived responses itself rather than have them cut.
///
/// # When it fires
///
/// When the worker begins its graceful stop, before `--graceful-timeout` runs out, whatever
/// the reason: the arbiter stops (TERM), a HUP reload or a USR2 upgrade replaces this
/// worker's generation, TTOU takes this worker away, `--max-requests` retires it, or the
/// arbiter is gone. At that moment the worker has stopped accepting connections; requests
/// already in flight go on, kept-alive HTTP/1 connections close after their current response
/// and HTTP/2 connections get GOAWAY. What the application has not ended when the graceful
/// timeout (counted from this moment) runs out is cut: a WebSocket client then sees an
/// abnormal closure (1006), a server-sent events client a truncated stream. A worker exits as
/// soon as its last connection has ended, so a stream ended promptly here lets it exit
/// promptly.
///
/// It never fires in the arbiter, in the bus hub, or in a process that is not an oxicorn
/// worker (a test that serves an app in-process): there a handle waits forever and
/// `is_stopping` stays false. A quick stop (QUIT to the worker, as the arbiter sends at its
/// own QUIT or INT) does not fire it either, nor does a kill for a missed heartbeat
/// (`--timeout`): the worker exits at once. Nor does a stop that comes while the app's factory
/// still runs: the worker drops the factory where it waits and exits at once, having served
/// nothing. Once fired it stays fired: a worker never resumes.
///
/// # Cost
///
/// Cloning is one reference-count increment; every handle of a process watches the same
/// token, so take one where convenient: in the factory (into the app's state), or with
/// [`Shutdown::current`] in the handler that streams. `is_stopping` takes an uncontended lock;
/// waiting costs nothing until the stop.
///
/// # Example
///
/// A WebSocket echo (axum's `WebSocketUpgrade`) that says goodbye with 1001, Going Away
/// (RFC 6455 §7.4.1), when the worker stops:
///
/// ```no_run
/// use axum::extract::ws::{CloseFrame, Message, WebSocket, close_code};
///
/// async fn echo(mut socket: WebSocket) {
///     let shutdown = oxicorn::Shutdown::current();
///     loop {
///         tokio::select! {
///             msg = socket.recv() => match msg {
///                 Some(Ok(msg)) => if socket.send(msg).await.is_err() { return },
///                 _ => return,
///             },
///             () = shutdown.stopped() => {
///                 let close = CloseFrame { code: close_code::AWAY, reason: "stopping".into() };
///                 let _ = socket.send(Message::Close(Some(close))).await;
///                 return;
///             }
///         }
///     }
/// }
/// ```
/// `examples/axum_app.rs` does this for `/ws`, and ends its server-sent events with a last
/// `event: shutdown`.
#[derive(Debug, Clone)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    /// The handle on this process's stop: the worker's, in a worker.
    pub fn current() -> Shutdown {
        Shutdown {
            token: token().clone(),
        }
    }

    /// Whether this worker has begun its graceful stop (see [`Shutdown`] for when).
    pub fn is_stopping(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes when this worker begins its graceful stop, at once if it has begun; never
    /// outside a worker. Cancel-safe: dropping it (a lost `select!` branch) loses nothing.
    pub async fn stopped(&self) {
        self.token.cancelled().await;
    }

    /// [`stopped`](Shutdown::stopped) as a future that owns the handle: `'static`, for a
    /// response body or a stream that keeps it beside its own state (box it with
    /// `Box::pin` to store it in a struct).
    pub fn stopped_owned(self) -> impl Future<Output = ()> + Send + 'static {
        self.token.cancelled_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every handle watches the worker's token, whether taken before or after it. (This test
    /// cancels the test process's token: no other unit test may use it.)
    #[tokio::test]
    async fn every_handle_fires_with_the_workers_stop() {
        let before = Shutdown::current();
        let stop = worker_stop();
        let after = before.clone();
        assert!(!before.is_stopping());
        let waiting = tokio::spawn(Shutdown::current().stopped_owned());
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        stop.cancel();
        waiting.await.unwrap();
        after.stopped().await;
        assert!(before.is_stopping() && Shutdown::current().is_stopping());
    }
}
