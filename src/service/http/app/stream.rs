//! HTTP/2 streams: the executor hyper runs each stream's task on, and the send timeout of a
//! stream whose client stopped reading it (nginx's `send_timeout`, which nginx applies to
//! HTTP/2 streams too).
//!
//! An HTTP/1 client that stops reading stalls the socket: the write blocks, and
//! [`super::io::DeadlineIo`] fails it after the service's idle timeout. An HTTP/2 client can
//! stop reading one stream without stalling the socket: it sends no WINDOW_UPDATE for that
//! stream, hyper's task for the stream waits for window with the response's next frame in
//! hand, and the connection goes on carrying pings and other streams. hyper has no deadline
//! for that wait, so the stream would be held (and its handler's resources with it) forever.
//!
//! So every stream's task is wrapped ([`StreamExecutor`]): the wrapper keeps a [`SendWatch`]
//! in a task-local while it polls the stream, the request path (whose future runs inside that
//! task) hands it to the [`super::ResponseBody`] with the connection's limit, and the body
//! marks when hyper takes a frame (`SendWatch::gave`) and when it asks for the next
//! (`SendWatch::asked`). A frame held with no ask for the limit means the client gave no
//! window: the wrapper drops the stream's task, h2 resets the stream (`RST_STREAM` with
//! `CANCEL`), the response body's guard logs the request as it stands. A body that is itself
//! pending (server-sent events between events) is the app's time, never cut here.
//!
//! This module owns the stream tasks' wrapper; it knows nothing of requests or sockets.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

tokio::task_local! {
    /// The watch of the HTTP/2 stream whose task is being polled.
    static STREAM: Arc<SendWatch>;
}

/// What a stream's response body tells the stream's task (module docs). Atomics because the
/// body and the task are separate values hyper owns; on the worker's one thread they are
/// never contended.
#[derive(Debug, Default)]
pub struct SendWatch {
    /// The send timeout in nanoseconds; 0 = none (no body was handed this watch).
    limit_ns: AtomicU64,
    /// hyper took a data frame and has not asked for another since.
    holding: AtomicBool,
    /// How many times hyper asked for a frame: progress, which restarts the clock.
    asks: AtomicU64,
}

impl SendWatch {
    /// The watch of the stream whose task is running now; `None` outside a stream task
    /// (HTTP/1, whose stalls the socket shows).
    pub(crate) fn current() -> Option<Arc<SendWatch>> {
        STREAM.try_with(Arc::clone).ok()
    }

    /// Arms the watch with the connection's send timeout.
    pub(crate) fn set_limit(&self, limit: Duration) {
        let ns = u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.limit_ns.store(ns, Ordering::Relaxed);
    }

    /// hyper asks the body for its next frame.
    pub(crate) fn asked(&self) {
        self.holding.store(false, Ordering::Relaxed);
        self.asks.fetch_add(1, Ordering::Relaxed);
    }

    /// The body gave hyper a data frame.
    pub(crate) fn gave(&self) {
        self.holding.store(true, Ordering::Relaxed);
    }

    fn limit(&self) -> Option<Duration> {
        match self.limit_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    /// `Some(asks)` while hyper holds a frame: the wait to time, named by the ask it follows.
    fn holding(&self) -> Option<u64> {
        self.holding
            .load(Ordering::Relaxed)
            .then(|| self.asks.load(Ordering::Relaxed))
    }
}

/// hyper's executor for HTTP/2 stream tasks: `tokio::spawn` of the task wrapped in its send
/// timeout (module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamExecutor;

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(watched(fut));
    }
}

/// Runs one stream's task under its [`SendWatch`]; drops it (resetting the stream) once hyper
/// has held a frame for the limit.
async fn watched<F: Future<Output = ()>>(stream: F) {
    let watch = Arc::new(SendWatch::default());
    let stream = STREAM.scope(Arc::clone(&watch), stream);
    tokio::pin!(stream);
    // Allocated at the first hold only: most streams end without one.
    let mut stall: Option<Pin<Box<Sleep>>> = None;
    // The hold `stall` is timing, named by the ask it follows.
    let mut timing: Option<u64> = None;
    std::future::poll_fn(|cx| {
        if stream.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        let (Some(limit), Some(hold)) = (watch.limit(), watch.holding()) else {
            timing = None;
            return Poll::Pending;
        };
        let deadline = Instant::now() + limit;
        let sleep = stall.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timing != Some(hold) {
            sleep.as_mut().reset(deadline);
            timing = Some(hold);
        }
        if sleep.as_mut().poll(cx).is_ready() {
            tracing::debug!(
                limit = ?limit,
                "HTTP/2 stream reset: the client read none of its response for the send timeout"
            );
            return Poll::Ready(());
        }
        Poll::Pending
    })
    .await;
    // `stream` is dropped here, with the task's h2 handles: h2 resets a stream still open.
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_held_frame_is_cut_after_the_limit_and_progress_restarts_the_clock() {
        let started = Instant::now();
        let task = tokio::spawn(watched(async move {
            let w = SendWatch::current().expect("inside a stream task");
            w.set_limit(Duration::from_secs(10));
            // The body's view: a frame taken at 0 s, the next asked for and taken at 6 s,
            // then no window ever again.
            w.asked();
            w.gave();
            tokio::time::sleep(Duration::from_secs(6)).await;
            w.asked();
            w.gave();
            std::future::pending::<()>().await;
        }));
        task.await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(16));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_is_itself_pending_is_never_cut() {
        let task = tokio::spawn(watched(async move {
            let w = SendWatch::current().unwrap();
            w.set_limit(Duration::from_secs(1));
            w.asked(); // hyper asked; the app has nothing yet
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }));
        let start = Instant::now();
        task.await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(3600));
    }

    #[test]
    fn outside_a_stream_task_there_is_no_watch() {
        assert!(SendWatch::current().is_none());
    }
}
