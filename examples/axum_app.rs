//! Your own axum application, served by oxicorn: pre-forked workers, HUP reloads, limits and
//! access logs, from a `main` of a few lines.
//!
//! ```text
//! cargo run --release --example axum_app -- --bind 127.0.0.1:8000 --workers 4
//! curl localhost:8000/              # a greeting naming the worker's pid
//! curl localhost:8000/worker        # {"pid":1234}
//! curl -d hello localhost:8000/echo # the body back
//! curl localhost:8000/sleep/3000    # answers in 3 s: send the arbiter a HUP meanwhile
//! curl localhost:8000/panic         # 500; the worker goes on
//! curl -N localhost:8000/events     # server-sent events, one a second, until the worker stops
//! curl -N 'localhost:8000/events?ignore-stop' # the same, cut only by the graceful deadline
//! curl localhost:8000/static/       # the directory in $APP_STATIC_DIR (default .)
//! ```
//! `/ws` is a WebSocket echo, `/client` shows the client's address as the app sees it. At a
//! graceful stop (TERM, a HUP reload) `/events` ends with `event: shutdown` and `/ws` sends a
//! Close frame with 1001, Going Away: both watch `oxicorn::Shutdown`. Every
//! oxicorn flag works (`--help`; `--version` names this program, then the oxicorn serving it),
//! and so do the app's own `--greeting`, `--warmup-ms` and `--hello-only` (`GET /` alone: the
//! router benches/app.sh compares with `axum::serve`).

// `GET /`: the one-route router that benches/axum_standalone serves too, shared by path so
// that the bench's two sides run the same code.
#[path = "../benches/axum_standalone/src/hello.rs"]
mod hello;

use std::pin::Pin;
use std::process::ExitCode;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Extension, Path, RawQuery};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use hyper::body::Frame;

// The app's own flags, beside oxicorn's (a `//` comment: a doc comment would become the
// program's `--help` description).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "App options")]
struct AppArgs {
    /// The first word of `GET /`
    #[arg(long, default_value = "hello")]
    greeting: String,
    /// Milliseconds each worker spends starting the app (as if loading templates); a worker
    /// takes traffic only once its app is ready
    #[arg(long, value_name = "MS", default_value_t = 0)]
    warmup_ms: u64,
    /// Serve `GET /` only, the router benches/axum_standalone runs under axum::serve (no other
    /// route, no static directory): what benches/app.sh measures
    #[arg(long)]
    hello_only: bool,
}

/// Why the app could not start in a worker.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve the static directory {dir} (set APP_STATIC_DIR)")]
struct StaticDirError {
    dir: String,
    #[source]
    source: std::io::Error,
}

fn main() -> ExitCode {
    // `program!()`: this binary's name and its package's version, for `--version` and the
    // server's log lines ("upgrade: axum_app 0.1.0 -> axum_app 0.2.0").
    let (server, args) = oxicorn::program!().from_args_with::<AppArgs>();
    // Called in each worker after the fork: whatever the app opens is opened there.
    server
        .app(move || {
            let args = args.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(args.warmup_ms)).await;
                if args.hello_only {
                    return Ok(hello::router(&args.greeting));
                }
                let dir = std::env::var("APP_STATIC_DIR").unwrap_or_else(|_| ".".into());
                let files = oxicorn::StaticFiles::open(&dir)
                    .map_err(|source| StaticDirError { dir, source })?;
                Ok::<_, StaticDirError>(router(&args.greeting, files))
            }
        })
        .run()
}

/// The application: an ordinary axum `Router`. Built in each worker after the fork, so the
/// pid read here is the worker's. `GET /` is [`hello::router`]'s.
fn router(greeting: &str, files: oxicorn::StaticFiles) -> Router {
    hello::router(greeting)
        .route(
            "/worker",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    format!("{{\"pid\":{}}}", std::process::id()),
                )
            }),
        )
        .route("/echo", post(|body: Bytes| async move { body }))
        .route(
            "/sleep/{ms}",
            get(|Path(ms): Path<u64>| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                format!("slept {ms} ms in worker {}\n", std::process::id())
            }),
        )
        .route("/panic", get(panics))
        .route("/events", get(events))
        .route(
            "/ws",
            get(|ws: WebSocketUpgrade| async move { ws.on_upgrade(echo) }),
        )
        .route(
            "/client",
            get(|Extension(client): Extension<oxicorn::Client>| async move {
                // The client's address as trusted proxies report it (--forwarded-allow-ips).
                let ip = client
                    .ip
                    .map_or_else(|| "-".to_string(), |ip| ip.to_string());
                format!("{ip} {}\n", client.scheme)
            }),
        )
        .nest_service("/static", files)
        // Binds the (empty) state now, turning every route's handler into a ready service
        // once; without it axum rebuilds the handler's service on every request (`axum::serve`
        // does the same through `into_make_service`).
        .with_state(())
}

/// Its handler panics: the client gets 500, the worker and its other requests go on.
async fn panics() -> &'static str {
    panic!("GET /panic panics on purpose")
}

/// A WebSocket echo until the client closes, or until this worker stops: then a Close frame
/// with 1001, Going Away (RFC 6455 §7.4.1), rather than the cut the client would otherwise
/// see at the graceful deadline (an abnormal closure, 1006).
async fn echo(mut socket: WebSocket) {
    let shutdown = oxicorn::Shutdown::current();
    loop {
        tokio::select! {
            // `recv` is cancel-safe: a message is never lost to the other branch.
            msg = socket.recv() => match msg {
                Some(Ok(msg @ (Message::Text(_) | Message::Binary(_)))) => {
                    if socket.send(msg).await.is_err() {
                        return;
                    }
                }
                // Pings are answered by axum; the client's Close is answered by returning.
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            },
            () = shutdown.stopped() => break,
        }
    }
    let close = CloseFrame {
        code: close_code::AWAY,
        reason: "server stopping".into(),
    };
    if socket.send(Message::Close(Some(close))).await.is_err() {
        return;
    }
    // The closing handshake: the client answers with its own Close (RFC 6455 §5.5.1). Waited
    // for briefly, so a client that never answers does not hold the worker's stop.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some(Ok(_)) = socket.recv().await {}
    })
    .await;
}

/// Server-sent events: `data: N` once a second, for as long as the client stays or until
/// this worker stops, when a last `event: shutdown` ends the stream. With `?ignore-stop` it
/// does not watch the stop, and the graceful deadline cuts it.
async fn events(RawQuery(query): RawQuery) -> Response {
    let stopped: Option<Pin<Box<dyn Future<Output = ()> + Send>>> = (query.as_deref()
        != Some("ignore-stop"))
    .then(|| Box::pin(oxicorn::Shutdown::current().stopped_owned()) as _);
    let ticks = Ticks {
        n: 0,
        interval: tokio::time::interval(Duration::from_secs(1)),
        stopped,
        ended: false,
    };
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::new(ticks.map_err(axum::Error::new)),
    )
        .into_response()
}

/// One event per tick, and a last one when the worker stops.
struct Ticks {
    n: u64,
    interval: tokio::time::Interval,
    /// The worker's stop; `None` for a stream that ignores it.
    stopped: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// The last event went out: the body ends.
    ended: bool,
}

impl hyper::body::Body for Ticks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if let Some(stopped) = self.stopped.as_mut()
            && stopped.as_mut().poll(cx).is_ready()
        {
            self.ended = true;
            let event = format!(
                "event: shutdown\ndata: worker {} is stopping\n\n",
                std::process::id()
            );
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))));
        }
        if self.interval.poll_tick(cx).is_pending() {
            return Poll::Pending;
        }
        self.n += 1;
        let event = format!("data: {} from worker {}\n\n", self.n, std::process::id());
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))))
    }
}
