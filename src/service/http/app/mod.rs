//! The application hook: a program's own `tower::Service` (an axum `Router`, say) served on
//! hyper, one connection at a time, inside a worker.
//!
//! hyper-util's `auto` builder speaks HTTP/1.1 (keep-alive, pipelining), HTTP/1.0 and HTTP/2
//! with prior knowledge (h2c) on the same listener, and hands upgraded connections
//! (WebSocket) to the app. Around it this module adds what an operator expects of a gunicorn
//! worker and hyper does not do:
//!
//! - deadlines for silent and slow clients: a slow head gets 408 ([`io`]), so does a request
//!   body that stops arriving (`--client-body-timeout`, [`body`]); a client that stops
//!   reading its response is cut after the idle timeout, nginx's `send_timeout` (HTTP/1 by
//!   [`io`], each HTTP/2 stream by [`stream`]);
//! - gunicorn's head limits, 414 / 431 ([`settings`]), a body limit, 413 ([`body`]), and a
//!   per-request deadline, 503 with the handler future dropped;
//! - a handler that panics costs its request a 500 and one ERROR line naming the request, the
//!   peer, the panic's text and its place in the code (the child's panic hook leaves the
//!   panic to this module: [`crate::child::catch_reported`]); a response body that panics
//!   ends that response, with one line too; the connection, its worker and the other
//!   connections go on;
//! - the socket peer ([`Peer`]) and the client as trusted proxies report it ([`Client`]) as
//!   request extensions;
//! - the access log shared with `static` ([`super::access_log`], gunicorn's
//!   `--access-logformat` atoms);
//! - a graceful stop: when the worker's stop token is cancelled, in-flight requests finish, a
//!   kept-alive HTTP/1 connection answers its current request with `connection: close` or is
//!   closed when idle, and HTTP/2 gets GOAWAY (hyper's `graceful_shutdown`). Streams that never
//!   end (server-sent events, WebSockets) run on until the worker's graceful deadline cuts them,
//!   unless the app ends them when [`crate::Shutdown`] (the same stop token) fires;
//! - every 32 requests a worker hands its CPU to whatever else waits for it (`handover`), so
//!   that a worker's connections do not all wait out a kernel time slice of its sibling's.
//!
//! This module serves connections it is given; it knows no listener, signal or config format.
//! The static file service's hand-written HTTP/1.1 parser is deliberately not used here: apps
//! get a complete HTTP stack, static keeps its fast path.

pub mod body;
pub mod factory;
pub mod forwarded;
mod handover;
pub mod io;
pub mod settings;
pub mod static_files;
pub mod stream;

use std::any::Any;
use std::convert::Infallible;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE, HeaderValue, REFERER, USER_AGENT};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;
use tower::util::Oneshot;

pub use body::{BoxError, ClientBodyTimeout, RequestBody, ResponseBody};
pub use factory::{App, AppBody, AppFactory, Application, error_chain};
pub use forwarded::{Client, ForwardedAllowIps};
pub use settings::HttpSettings;
pub use static_files::StaticFiles;

use super::access_log::{AccessLog, Captured, Record, RequestLine as LogLine};
use crate::child::{CaughtPanic, catch_reported};
use crate::net::{Peer, Stream};
use crate::service::ConnContext;
use crate::service::metrics::Metrics;
use body::BodyOutcome;
use io::{ConnState, DeadlineIo, Deadlines};
use stream::{SendWatch, StreamExecutor};

/// The request type an application receives.
pub type AppRequest = Request<RequestBody>;

/// One application, ready to serve connections in this worker: the app, its settings, the
/// hyper builder and the access log.
pub struct AppService {
    app: App,
    settings: Arc<HttpSettings>,
    /// Built once; `serve_connection_with_upgrades` borrows it per connection.
    builder: auto::Builder<StreamExecutor>,
    access_log: Option<Arc<AccessLog>>,
}

impl fmt::Debug for AppService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppService")
            .field("settings", &self.settings)
            .field("access_log", &self.access_log)
            .finish_non_exhaustive()
    }
}

impl AppService {
    /// Wraps an application.
    ///
    /// `app` is any cloneable `tower::Service` taking [`AppRequest`]s, axum's `Router`
    /// included (`Router<()>` implements it for every body type). Its errors become 500s (an
    /// axum `Router`'s error type is `Infallible`).
    pub fn new<S, B>(app: S, settings: HttpSettings) -> AppService
    where
        S: Application<B>,
        B: AppBody,
    {
        AppService::from_app(App::new(app), settings)
    }

    /// Serves an app a factory built.
    pub fn from_app(app: App, settings: HttpSettings) -> AppService {
        AppService {
            app,
            builder: builder(&settings),
            settings: Arc::new(settings),
            access_log: None,
        }
    }

    /// Builds the registered app ([`factory::register`]) in this worker and serves it with
    /// `config`: the `app` service's boot. The worker is ready only once this returns.
    ///
    /// # Errors
    /// No factory registered (the `oxicorn` binary has no app), the factory's own error with
    /// its cause chain, or an access log that cannot be opened: a worker boot error.
    pub async fn start(config: &crate::config::AppConfig) -> std::io::Result<AppService> {
        let factory = factory::registered().ok_or_else(|| {
            std::io::Error::other(
                "no application: the `app` service needs a program that embeds oxicorn \
                 (oxicorn::Server::app)",
            )
        })?;
        let app = factory.build().await.map_err(|e| {
            std::io::Error::other(format!(
                "the application failed to start: {}",
                error_chain(&*e)
            ))
        })?;
        let mut service = AppService::from_app(app, config.http.clone());
        if let Some(path) = &config.access_logfile {
            let format = match &config.access_logformat {
                Some(f) => super::access_log::LogFormat::parse(f).map_err(|e| {
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
                })?,
                None => super::access_log::LogFormat::default(),
            };
            service = service.with_access_log(AccessLog::open(path, format)?);
        }
        Ok(service)
    }

    /// Logs every request to `log`.
    pub fn with_access_log(mut self, log: AccessLog) -> AppService {
        self.access_log = Some(Arc::new(log));
        self
    }

    /// The settings this app is served with.
    pub fn settings(&self) -> &HttpSettings {
        &self.settings
    }

    /// Reopens the access log (USR1).
    ///
    /// # Errors
    /// If the file cannot be reopened; the old one stays in use.
    pub fn reopen_logs(&self) -> std::io::Result<()> {
        self.access_log.as_ref().map_or(Ok(()), |l| l.reopen())
    }

    /// Serves one connection to its end (module docs). Errors end this connection only and
    /// are logged at debug level.
    ///
    /// When the connection was upgraded, this returns only once the app has dropped the
    /// upgraded stream, so the worker's drain waits for WebSockets as for any connection.
    pub fn serve(&self, stream: Stream, ctx: ConnContext) -> ServeFuture<'_> {
        self.app.0.serve(self, stream, ctx)
    }
}

/// A connection being served ([`AppService::serve`]).
pub type ServeFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// [`AppService::serve`] for an app of type `S`: everything below is made for the app's own
/// types ([`App`]).
async fn serve_typed<S, B>(svc: &AppService, app: S, stream: Stream, ctx: ConnContext)
where
    S: Application<B>,
    B: AppBody,
{
    let ConnContext {
        peer,
        stop,
        idle_timeout,
        metrics,
        reclaim,
        listener: _,
        // Handing connections over is for line services; HTTP drains on `stop`.
        retire: _,
    } = ctx;
    let state = Arc::new(ConnState::new(reclaim));
    let deadlines = Deadlines {
        header: svc.settings.header_timeout,
        keep_alive: svc.settings.keep_alive,
        write_stall: idle_timeout,
    };
    let (io, released) = DeadlineIo::new(stream, Arc::clone(&state), deadlines);
    let conn_ctx = Arc::new(ConnShared {
        settings: Arc::clone(&svc.settings),
        access_log: svc.access_log.clone(),
        peer: peer.clone(),
        extensions: extensions_for(&peer),
        metrics,
        state: Arc::clone(&state),
        send_timeout: idle_timeout,
    });
    let conn = svc.builder.serve_connection_with_upgrades(
        TokioIo::new(io),
        ConnService {
            shared: conn_ctx,
            app,
        },
    );
    tokio::pin!(conn);
    // A graceful stop. hyper's `graceful_shutdown` closes an idle kept-alive connection
    // at once, which races a request the client is sending at that moment (the client
    // sees the connection reset, not an answer). So from the stop on, every HTTP/1
    // response says `connection: close` (`ConnState::closing`), and an idle connection
    // gets STOP_GRACE for one more request to arrive before it is shut; one with a
    // request in flight, or HTTP/2 when a request begins, is shut at once (HTTP/2: GOAWAY,
    // open streams end).
    let mut phase = Stop::Serving;
    let grace = tokio::time::sleep(STOP_GRACE);
    tokio::pin!(grace);
    let cancelled = stop.cancelled();
    tokio::pin!(cancelled);
    let mut watch = StopWatch::new();
    let result = loop {
        if phase == Stop::Serving {
            // Until the stop, without `select!`: the stop's future is polled only when it
            // may have fired (`StopWatch`).
            let served = std::future::poll_fn(|cx| {
                let polled = {
                    // A request that ends in here needs no wake-up (`ConnState::polling`).
                    let _polling = state.polling();
                    conn.as_mut().poll(cx)
                };
                if let Poll::Ready(res) = polled {
                    return Poll::Ready(Some(res));
                }
                watch.poll(cancelled.as_mut(), cx).map(|()| None)
            })
            .await;
            if let Some(res) = served {
                break res;
            }
            // SeqCst: pairs with `ConnState::request_started` (a request it misses here
            // notifies `request_began`).
            state.closing.store(true, Ordering::SeqCst);
            if state.in_flight.load(Ordering::SeqCst) > 0 {
                conn.as_mut().graceful_shutdown();
                phase = Stop::Shut;
            } else {
                grace.as_mut().reset(Instant::now() + STOP_GRACE);
                phase = Stop::Grace;
            }
            continue;
        }
        tokio::select! {
            res = conn.as_mut() => break res,
            () = state.request_began.notified(), if phase == Stop::Grace => {
                // The request may have ended already: check.
                if state.in_flight.load(Ordering::Acquire) > 0 {
                    conn.as_mut().graceful_shutdown();
                    phase = Stop::Shut;
                }
            }
            () = &mut grace, if phase == Stop::Grace => {
                conn.as_mut().graceful_shutdown();
                phase = Stop::Shut;
            }
        }
    };
    // Heads answered here without reaching the app get a line with `-` for the request,
    // as the static service logs one: a head hyper could not parse (hyper answered it
    // itself: 400, 414 or 431), one too slow (408) and a later HTTP version (505).
    let log_refused = |status: StatusCode, elapsed: std::time::Duration| {
        if let Some(log) = &svc.access_log {
            log.log(&Record {
                peer: &peer,
                request: None,
                status,
                body_bytes: Some(0),
                referer: None,
                user_agent: None,
                request_headers: None,
                response_headers: None,
                elapsed,
            });
        }
    };
    if let Err(err) = result {
        tracing::debug!(peer = %peer, cause = %err, "connection ended with an error");
        // A head the stream answered itself (408, 505) has its one line below: what hyper
        // made of the EOF that follows never reached the client.
        if let Some(status) = refused_head_status(&*err).filter(|_| !state.answered_a_head()) {
            log_refused(status, std::time::Duration::ZERO);
        }
    }
    if state.head_timed_out.load(Ordering::Relaxed) {
        log_refused(StatusCode::REQUEST_TIMEOUT, svc.settings.header_timeout);
    }
    if state.version_refused.load(Ordering::Relaxed) {
        log_refused(
            StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            std::time::Duration::ZERO,
        );
    }
    if state.upgraded.load(Ordering::Acquire) {
        // Err(RecvError) is the only outcome: the sender lives in the stream and is dropped
        // with it.
        let _ = released.await;
    }
}

/// How long an idle kept-alive connection stays open once a graceful stop begins: long enough
/// for a request already on its way to arrive and be answered with `connection: close` (the
/// static service's rule too).
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Watches the worker's stop token for one connection without a lock per wake-up.
///
/// Polled beside the connection (as `select!` did), the token's future takes two
/// uncontended mutexes (the token's tree node, then its `Notify`) every time the connection's
/// task wakes, about twice per request (perf, 2026-11-30: ~0.5% of a hello-world worker).
/// Here that future is polled with a waker of its own ([`StopFlag`]), which notes that it
/// fired and wakes the task: the future is polled again only then, and the task's waker is
/// handed over only when it changes.
struct StopWatch {
    flag: Arc<StopFlag>,
    /// `flag` as a waker, made once.
    waker: std::task::Waker,
    /// The task's waker `flag` holds; `None` before the first poll.
    task: Option<std::task::Waker>,
}

/// The stop future's waker: notes the wake-up and passes it on to the connection's task.
struct StopFlag {
    fired: std::sync::atomic::AtomicBool,
    task: std::sync::Mutex<Option<std::task::Waker>>,
}

impl std::task::Wake for StopFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(task) = task {
            task.wake();
        }
    }
}

impl StopWatch {
    fn new() -> StopWatch {
        let flag = Arc::new(StopFlag {
            fired: std::sync::atomic::AtomicBool::new(false),
            task: std::sync::Mutex::new(None),
        });
        StopWatch {
            waker: std::task::Waker::from(Arc::clone(&flag)),
            flag,
            task: None,
        }
    }

    /// Ready once `cancelled` (the token's future) is; `cx`'s task is woken when it may be.
    fn poll(
        &mut self,
        cancelled: Pin<&mut tokio_util::sync::WaitForCancellationFuture<'_>>,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        let first = self.task.is_none();
        if !self.task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *self.flag.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
            self.task = Some(cx.waker().clone());
        }
        // Polled first to register the flag, then only after the flag was woken (the token
        // wakes its waiters only when cancelled; a wake-up without it re-registers). Loaded
        // before it is swapped: the swap is needed only the once.
        let fired = || {
            self.flag.fired.load(Ordering::Acquire) && self.flag.fired.swap(false, Ordering::AcqRel)
        };
        if !first && !fired() {
            return Poll::Pending;
        }
        cancelled.poll(&mut Context::from_waker(&self.waker))
    }
}

/// Where a connection is in a graceful stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// No stop yet.
    Serving,
    /// Stop begun on an idle connection: waiting up to [`STOP_GRACE`] for one more request.
    Grace,
    /// hyper's graceful shutdown is under way.
    Shut,
}

/// How many header fields hyper's HTTP/1 parser takes when not told a number (hyper's
/// `DEFAULT_MAX_HEADERS`); more get 431.
const HYPER_MAX_HEADERS: usize = 100;

/// The status hyper answered a head it could not parse with (`Server::on_error` in hyper
/// 1's `proto/h1/role.rs`): 414 for a request line over its buffer, 431 for a head over it
/// or too many fields, 400 for any other parse error; `None` when the error is not a head
/// hyper refused (a reset, a timeout, an HTTP/2 error).
fn refused_head_status(err: &(dyn std::error::Error + 'static)) -> Option<StatusCode> {
    let err = err.downcast_ref::<hyper::Error>()?;
    if !err.is_parse() {
        return None;
    }
    if err.is_parse_too_large() {
        // hyper tells the two apart by kind only; its message names the URI for 414.
        return Some(if err.to_string().contains("URI") {
            StatusCode::URI_TOO_LONG
        } else {
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        });
    }
    // Parse::Internal gets no answer from hyper.
    (!err.to_string().contains("internal")).then_some(StatusCode::BAD_REQUEST)
}

/// The hyper builder for these settings.
fn builder(s: &HttpSettings) -> auto::Builder<StreamExecutor> {
    let mut b = auto::Builder::new(StreamExecutor);
    b.http1()
        // The timer hyper needs for its own HTTP/1 timeouts; its header read timeout is
        // turned off because `io::DeadlineIo` keeps that clock (and answers 408).
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        // A client may send its request and shut its writing side (`printf ... | nc -q1`,
        // `shutdown(SHUT_WR)`): it still gets its answer, as from nginx and gunicorn. Without
        // this hyper closes at that EOF and the answer is lost when the EOF wins the race.
        .half_close(true)
        .keep_alive(!s.keep_alive.is_zero());
    // hyper parses at most 100 fields unless told otherwise, on the stack; told any number,
    // it builds its two header arrays element by element for every request (smallvec's
    // `from_elem`, ~1% of a worker's time on a hello-world). So it is told only of a limit
    // above its own: below it, `HttpSettings::check_head` answers the same 431.
    if s.limit_request_fields > HYPER_MAX_HEADERS {
        b.http1().max_headers(s.limit_request_fields);
    }
    b.http1()
        // Not `pipeline_flush(true)`: with it, hyper 1.12 drops its own 400/414/431 answers
        // to heads it cannot parse (the connection closes before the flush; measured).
        .max_buf_size(s.head_buffer());
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(s.head_buffer()).unwrap_or(u32::MAX));
    b
}

/// What every request of one connection shares (moved into each request's future: HTTP/2
/// runs those in tasks of their own).
struct ConnShared {
    /// What every request's extensions start as: [`extensions_for`] the peer.
    extensions: http::Extensions,
    settings: Arc<HttpSettings>,
    access_log: Option<Arc<AccessLog>>,
    peer: Peer,
    /// Where requests and bytes out are counted (the worker's scoreboard).
    metrics: Metrics,
    state: Arc<ConnState>,
    /// How long a response may wait on a client that reads none of it (the service's idle
    /// timeout, nginx's `send_timeout`): HTTP/1 by the socket's clock, HTTP/2 per stream.
    send_timeout: Option<std::time::Duration>,
}

/// The request target as oxicorn received it, before the app's router rewrote the request's
/// URI (axum's `nest_service` strips its prefix): tells [`StaticFiles`] where it is mounted.
/// Put on requests only in a process that made a `StaticFiles` ([`static_files::in_use`]).
#[derive(Debug, Clone)]
pub(crate) struct ReceivedUri(pub(crate) Uri);

/// The extensions a connection's requests start with: its `Peer` and the `Client` it is when
/// no proxy speaks for it (a request whose trusted proxy forwards another replaces it), in a
/// map with room for seven entries, so that neither ours (`ReceivedUri`, a forwarded
/// `Client`) nor an axum `Router`'s three (`OriginalUri`, `MatchedPath`, `UrlParams`) make it
/// grow. A map grown from scratch by five or six inserts is rehashed on every request when it
/// outgrows its first four buckets (~0.4% of a hello-world worker's time, perf, 2026-11-30;
/// `axum::serve`'s three inserts fit). Cloned per request, which keeps the room: a hashbrown
/// map keeps its buckets when entries are removed and when cloned. That is a speed assumption
/// only: were it to change, requests would carry the same extensions, built as before.
fn extensions_for(peer: &Peer) -> http::Extensions {
    /// Takes a place in the map and is removed; zero-sized, so its box allocates nothing.
    #[derive(Clone, Copy)]
    struct Room<const N: u8>;
    let mut e = http::Extensions::new();
    e.insert(peer.clone());
    e.insert(Client::direct(peer));
    e.insert(Room::<1>);
    e.insert(Room::<2>);
    e.insert(Room::<3>);
    e.insert(Room::<4>);
    e.insert(Room::<5>);
    e.remove::<Room<1>>();
    e.remove::<Room<2>>();
    e.remove::<Room<3>>();
    e.remove::<Room<4>>();
    e.remove::<Room<5>>();
    e
}

/// The hyper service of one connection: the app (a clone of the worker's, an `Arc` bump for
/// an axum `Router`) and what its requests share.
struct ConnService<S> {
    shared: Arc<ConnShared>,
    app: S,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for ConnService<S>
where
    S: tower::Service<AppRequest, Response = Response<B>> + Clone,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<B>>;
    type Error = Infallible;
    type Future = HandleFuture<S>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        // Counted in here, as hyper hands the head over, rather than when the future is first
        // polled: hyper reads the socket once more before it polls it (to notice a client that
        // left), and the connection's clock must see that read as one with a request in
        // flight, not as the wait for a new head.
        handle(&self.shared, &self.app, req)
    }
}

/// `METHOD TARGET VERSION` of a request, kept for the logs after the app took the request.
#[derive(Clone)]
struct RequestLine {
    method: Method,
    uri: Uri,
    version: Version,
}

impl fmt::Display for RequestLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {:?}", self.method, self.uri, self.version)
    }
}

pin_project! {
    /// What [`ConnService`] answers a request with: the app's future under the request's
    /// deadline and panic guard, or an answer made without the app; the response is wrapped
    /// by [`finish`] when it is ready. Not boxed: hyper keeps the future of the request in
    /// flight in one place per connection (HTTP/1), as it does `axum::serve`'s.
    struct HandleFuture<S: tower::Service<AppRequest>> {
        #[pin]
        answer: Answer<Oneshot<S, AppRequest>>,
        // `--request-timeout`: the request's deadline, boxed (it is rarely set).
        deadline: Option<Pin<Box<Sleep>>>,
        // The request, for the logs.
        line: RequestLine,
        // Taken by the response body (`finish`); `None` once the future has answered.
        end: Option<RequestEnd>,
        // How the request body ended, for a request with one.
        read: Option<Arc<BodyOutcome>>,
    }
}

pin_project! {
    /// Who answers a request.
    #[project = AnswerProj]
    enum Answer<F> {
        /// The app, its panics caught.
        App { #[pin] run: CatchUnwind<F> },
        /// This module, with this status, the head alone refused (431, 413).
        Early { status: StatusCode },
    }
}

/// One request: the checks, then the app under its deadline and panic guard
/// ([`HandleFuture`]), the response wrapped for counting and logging.
///
/// The checks run here, as hyper hands the request over; only the app's part is a future, so
/// it holds what the answer needs across the app's await (the app's own future or request,
/// and the request's end), not hyper's request besides (perf, 2026-11-30: moving a 1,256-byte
/// `async fn` per request showed).
fn handle<S>(c: &Arc<ConnShared>, app: &S, req: Request<Incoming>) -> HandleFuture<S>
where
    S: tower::Service<AppRequest> + Clone,
{
    // Counted first, so that whatever happens below the request is counted out (the end's
    // drop).
    let mut end = RequestEnd::start(c, req.version());
    let settings = &*c.settings;
    let (mut parts, body) = req.into_parts();
    // The head's checks, and what they noted of its fields on the way.
    let checked = settings.check_head(&parts);
    // `None`: the client is the peer, as the connection's map says already.
    let forwarded = match checked {
        Ok(fields) if !fields.forwarding => None,
        Ok(_) => Client::forwarded_by(&c.peer, &parts.headers, &settings.forwarded_allow_ips),
        // Refused: for the access log's line.
        Err(_) => Client::forwarded(&c.peer, &parts.headers, &settings.forwarded_allow_ips),
    };
    // Kept for the logs that name the request (a panic, a deadline, an error), after the app
    // took the request.
    let line = RequestLine {
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        version: parts.version,
    };
    // What the access log needs, when it is on.
    end.logged = c.access_log.as_ref().map(|log| {
        Box::new(Logged {
            // The scoreboard takes no duration, and a clock read is ~1% of a hello-world
            // request (perf, 2026-11-30): read for the access log only. The request's end
            // reads the clock anyway, for the connection's idle deadline.
            started: Instant::now(),
            line: line.clone(),
            client: forwarded
                .as_ref()
                .map_or_else(|| c.peer.clone(), |client| client_peer(&c.peer, client)),
            referer: parts.headers.get(REFERER).cloned(),
            user_agent: parts.headers.get(USER_AGENT).cloned(),
            request: log
                .format()
                .capture_request(&parts.headers, parts.uri.authority()),
            response: Captured::default(),
        })
    });
    let limit = (settings.limit_request_body > 0).then_some(settings.limit_request_body);
    // A declared length over the limit: hyper's body knows the `Content-Length` it parsed
    // (an exact size hint), so no header is looked up again.
    let declared_too_big = limit.is_some_and(|limit| body.size_hint().lower() > limit);
    let early = checked
        .err()
        .or(declared_too_big.then_some(StatusCode::PAYLOAD_TOO_LARGE));
    let has_body = !body.is_end_stream();
    if has_body {
        // Before an early answer too: not every one closes (a 400 keeps the connection), and
        // hyper may then drain the body.
        mark_sized_body(c, &body);
    }
    if let Some(status) = early {
        // The head alone is refused: the app is not called, and an HTTP/1 connection closes
        // rather than read a body nobody wants. Answered when polled: an HTTP/2 stream's send
        // watch is its task's (`finish`).
        return HandleFuture {
            answer: Answer::Early { status },
            deadline: None,
            line,
            end: Some(end),
            read: None,
        };
    }
    // The connection's map (the `Peer`, and room), then what hyper put on the request.
    let hyper_put = std::mem::replace(&mut parts.extensions, c.extensions.clone());
    parts.extensions.extend(hyper_put);
    if let Some(client) = forwarded {
        parts.extensions.insert(client);
    }
    if static_files::in_use() {
        parts.extensions.insert(ReceivedUri(line.uri.clone()));
    }
    // Only a request with a body can overrun or stall it.
    let read = has_body.then(|| Arc::new(BodyOutcome::default()));
    let body = RequestBody::new(body, limit, settings.client_body_timeout, read.clone());
    let req = Request::from_parts(parts, body);
    HandleFuture {
        answer: Answer::App {
            run: CatchUnwind {
                inner: app.clone().oneshot(req),
            },
        },
        deadline: settings
            .request_timeout
            .map(|limit| Box::pin(tokio::time::sleep(limit))),
        line,
        end: Some(end),
        read,
    }
}

/// Tells the connection's clock when `body` has a `Content-Length` (hyper's exact size hint):
/// its last bytes then say nothing of whether a head follows it (`io`'s module docs, "A head
/// pipelined behind a request"). Only for a request with a body: the hot path has none.
fn mark_sized_body(c: &ConnShared, body: &Incoming) {
    if body.size_hint().exact().is_some() {
        c.state.sized_body_began();
    }
}

impl<S, B> Future for HandleFuture<S>
where
    S: tower::Service<AppRequest, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<ResponseBody<B>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let outcome = match this.answer.project() {
            AnswerProj::Early { status } => Err(*status),
            AnswerProj::App { run } => match run.poll(cx) {
                Poll::Ready(outcome) => Ok(Some(outcome)),
                Poll::Pending => match this.deadline.as_mut().map(|d| d.as_mut().poll(cx)) {
                    Some(Poll::Ready(())) => Ok(None),
                    _ => return Poll::Pending,
                },
            },
        };
        let end = this
            .end
            .take()
            .expect("a request's future is not polled after it answered");
        let response = match outcome {
            Err(status) => Either::Right(status_response(status, end.version)),
            Ok(outcome) => app_response(outcome, this.line, &end.conn.peer, this.read.as_deref()),
        };
        let head = this.line.method == Method::HEAD;
        Poll::Ready(Ok(finish(end, response, head)))
    }
}

/// The response to send for the app's `outcome` (`None`: the request's deadline passed):
/// the app's own, or 503, 500, 413 or 408 made here.
fn app_response<B, E>(
    outcome: Option<Caught<Result<Response<B>, E>>>,
    line: &RequestLine,
    peer: &Peer,
    read: Option<&BodyOutcome>,
) -> Either<Response<B>, Response<Full<Bytes>>>
where
    E: Into<BoxError>,
{
    let status = match outcome {
        None => {
            tracing::warn!(request = %line, peer = %peer, "request timed out: 503, handler dropped");
            StatusCode::SERVICE_UNAVAILABLE
        }
        Some(Err(panic)) => {
            handler_panicked(line, peer, &panic);
            StatusCode::INTERNAL_SERVER_ERROR
        }
        Some(Ok(Err(err))) => {
            let err: BoxError = err.into();
            tracing::error!(request = %line, peer = %peer, cause = %err, "app failed: 500");
            StatusCode::INTERNAL_SERVER_ERROR
        }
        // The body went over the limit, or stopped arriving: whatever the app made of the
        // error, the client is told 413 or 408.
        Some(Ok(Ok(_))) if read.is_some_and(|o| o.exceeded.load(Ordering::Relaxed)) => {
            StatusCode::PAYLOAD_TOO_LARGE
        }
        Some(Ok(Ok(_))) if read.is_some_and(|o| o.timed_out.load(Ordering::Relaxed)) => {
            tracing::debug!(request = %line, peer = %peer, "request body timed out: 408");
            StatusCode::REQUEST_TIMEOUT
        }
        Some(Ok(Ok(response))) => return Either::Left(response),
    };
    Either::Right(status_response(status, line.version))
}

/// Logs the one line for a handler's panic: the hook left it to this catcher
/// ([`catch_reported`]). Out of line: the request path stays small.
#[cold]
#[inline(never)]
fn handler_panicked(line: &RequestLine, peer: &Peer, panic: &CaughtPanic) {
    log_caught_panic("handler panicked: 500", Some(line), Some(peer), panic);
}

/// The one ERROR line for a panic this module caught (a handler's, a response body's):
/// `message`, then the request line and the peer where known, the panic's text, its place in
/// the code and, when `RUST_BACKTRACE` asked for one, its backtrace (the hook's note).
fn log_caught_panic(
    message: &'static str,
    request: Option<&RequestLine>,
    peer: Option<&Peer>,
    panic: &CaughtPanic,
) {
    let note = panic.note.as_ref();
    tracing::error!(
        request = request.map(tracing::field::display),
        peer = peer.map(tracing::field::display),
        cause = panic_message(&*panic.payload),
        at = note.map(|n| tracing::field::display(&n.location)),
        backtrace = note
            .and_then(|n| n.backtrace.as_ref())
            .map(tracing::field::display),
        "{message}"
    );
}

/// The response as it leaves: an upgrade noted, `connection: close` once the worker stops,
/// no content where HTTP forbids it ([`bodiless`]), and its body wrapped to count and log it
/// and end the request when hyper drops it. `head`: the request's method is HEAD. Called in
/// the task that polls the request's future (an HTTP/2 stream's own: [`SendWatch::current`]).
fn finish<B>(
    mut end: RequestEnd,
    response: Either<Response<B>, Response<Full<Bytes>>>,
    head: bool,
) -> Response<ResponseBody<B>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut response = match response {
        Either::Left(r) => r.map(Either::Left),
        Either::Right(r) => r.map(Either::Right),
    };
    if end.version == Version::HTTP_2 && bodiless(head, response.status()) {
        // The app's body is dropped unread (a file closed, a stream ended); its headers,
        // `content-length` included, stay as it set them.
        response = response.map(|_| Either::Right(Full::new(Bytes::new())));
    }
    let c = &*end.conn;
    // The headers the app (or this module's own answer) set, before `connection: close`.
    if let (Some(log), Some(kept)) = (&c.access_log, end.logged.as_mut()) {
        kept.response = log.format().capture_response(response.headers());
    }
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        c.state.upgraded.store(true, Ordering::Release);
    } else if c.state.closing.load(Ordering::Acquire) && end.version < Version::HTTP_2 {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    // HTTP/2: the stream's task times a client that reads none of the response (HTTP/1
    // has no stream task: its socket's writes are timed).
    let send = c
        .send_timeout
        .filter(|_| end.version == Version::HTTP_2)
        .and_then(|limit| {
            let watch = SendWatch::current()?;
            watch.set_limit(limit);
            Some(watch)
        });
    end.status = response.status();
    response.map(|b| ResponseBody::new(b, end, send))
}

/// Whether a response must carry no content, whatever body the app gave it: one to HEAD
/// (RFC 9110 §9.3.2), a 204 (§15.3.5) or a 304 (§15.4.5). hyper's HTTP/1 writer leaves such
/// a body out; its HTTP/2 one sends whatever the body yields, as DATA frames. axum strips the
/// body of its own routes' answers to HEAD, but not of a nested service's (a `StaticFiles`
/// mounted with `nest_service` answered `HEAD` over h2c with the whole file), nor of any 204
/// or 304 an app builds with content, so the request path drops it for HTTP/2.
fn bodiless(head: bool, status: StatusCode) -> bool {
    head || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED
}

/// What only the access log needs of a request, kept when it is on.
struct Logged {
    /// When the request was handed over.
    started: Instant,
    line: RequestLine,
    /// The client as the log shows it (`%(h)s`): forwarded by a trusted proxy, or the peer.
    client: Peer,
    referer: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
    /// The request headers `%({name}i)s` atoms name: nothing kept, and no allocation, for a
    /// format without any.
    request: Captured<HeaderValue>,
    /// The response headers `%({name}o)s` atoms name, set by [`finish`].
    response: Captured<HeaderValue>,
}

/// What happens when a response body is dropped: counters, the access-log line, and the
/// connection's clock learns the request is over ([`ConnState::request_ended_at`]).
///
/// Small (what the access log alone needs is boxed, and only kept when it is on): it moves
/// with the response, and its bytes are copied each time (callgrind, 2026-11-30).
///
/// A request dropped before it was answered (its HTTP/2 stream reset by the client, its
/// connection closed or cut) is counted and logged too, when the end is dropped, with nginx's
/// 499 ("client closed request") and no body bytes: the access log has a line for every
/// request.
pub(crate) struct RequestEnd {
    status: StatusCode,
    version: Version,
    /// Set by [`RequestEnd::end`]; a drop without it is a request that got no answer.
    ended: bool,
    logged: Option<Box<Logged>>,
    conn: Arc<ConnShared>,
}

/// The status logged for a request that ended before its answer: nginx's 499, "client closed
/// request" (no status was sent).
fn client_closed_request() -> StatusCode {
    StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST)
}

impl Drop for RequestEnd {
    fn drop(&mut self) {
        if !self.ended {
            self.status = client_closed_request();
            self.record(0);
        }
    }
}

impl RequestEnd {
    /// Counts a request of `version` in on `conn`: it is in flight for the connection's clock
    /// until this end is recorded (answered, or dropped). The status is the response's, set
    /// by `finish`; the access log's data is added by the caller when the log is on.
    fn start(conn: &Arc<ConnShared>, version: Version) -> RequestEnd {
        conn.state.request_started();
        RequestEnd {
            status: StatusCode::OK,
            version,
            ended: false,
            logged: None,
            conn: Arc::clone(conn),
        }
    }

    /// Counts the request, logs it, and tells the connection's clock it is over: called once,
    /// when hyper drops the response body, with the body bytes produced.
    pub(crate) fn end(mut self, bytes: u64) {
        self.ended = true;
        self.record(bytes);
    }

    /// [`RequestEnd::end`]'s work, for `bytes` of body sent with `self.status`.
    fn record(&mut self, bytes: u64) {
        let now = Instant::now();
        // Zero without an access log: the scoreboard ignores it (`Metrics::request`).
        let elapsed = self.logged.as_ref().map_or(std::time::Duration::ZERO, |l| {
            now.saturating_duration_since(l.started)
        });
        let metrics = &self.conn.metrics;
        metrics.bytes_out(bytes);
        metrics.request(self.status, elapsed);
        if let (Some(log), Some(h)) = (&self.conn.access_log, &self.logged) {
            // The target as the client sent it: for HTTP/2, `:path` (hyper rebuilds the URI
            // from `:scheme` and `:authority` too), as nginx's `$request` shows it; for HTTP/1
            // an origin-form target is its path and query, an absolute-form one whole.
            let uri = &h.line.uri;
            let whole;
            let target = match uri.path_and_query() {
                Some(pq) if uri.scheme().is_none() || h.line.version == http::Version::HTTP_2 => {
                    pq.as_str()
                }
                _ => {
                    whole = uri.to_string();
                    whole.as_str()
                }
            };
            log.log(&Record {
                peer: &h.client,
                request: Some(LogLine {
                    method: &h.line.method,
                    target,
                    version: h.line.version,
                }),
                status: self.status,
                body_bytes: Some(bytes),
                referer: h.referer.as_ref().map(HeaderValue::as_bytes),
                user_agent: h.user_agent.as_ref().map(HeaderValue::as_bytes),
                request_headers: Some(&h.request),
                response_headers: Some(&h.response),
                elapsed,
            });
        }
        // Once: `end` consumes the end, and its drop records only what `end` did not.
        self.conn.state.request_ended_at(now);
        // Last: the hand-over may block this thread while another task runs.
        handover::request_answered(now);
    }
}

/// The peer the access log names: the forwarded client when a trusted proxy gave one (port
/// 0: proxies do not always say), else the socket's.
fn client_peer(peer: &Peer, client: &Client) -> Peer {
    match (client.forwarded, client.ip) {
        (true, Some(ip)) => Peer::Tcp(std::net::SocketAddr::new(ip, 0)),
        _ => peer.clone(),
    }
}

/// A short plain-text answer the server makes itself: `413 Payload Too Large`. Statuses that
/// leave a request body unread (408, 413, 414, 431, and 501 for a transfer coding not
/// understood) close an HTTP/1 connection.
fn status_response(status: StatusCode, version: Version) -> Response<Full<Bytes>> {
    let text = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    let closes = matches!(
        status,
        StatusCode::REQUEST_TIMEOUT
            | StatusCode::PAYLOAD_TOO_LARGE
            | StatusCode::URI_TOO_LONG
            | StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            | StatusCode::NOT_IMPLEMENTED
    );
    if closes && version < Version::HTTP_2 {
        r.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

/// What a [`CatchUnwind`] future gives: its output, or the panic with the hook's note.
type Caught<T> = Result<T, CaughtPanic>;

pin_project! {
    /// A future whose panic is caught and returned (the app's handler: a panic costs one
    /// request), with the note the child's panic hook left instead of logging it
    /// ([`crate::child::catch_reported`]): the request path logs it once, naming the request.
    struct CatchUnwind<F> {
        #[pin]
        inner: F,
    }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Caught<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.project().inner;
        // AssertUnwindSafe: after a panic the future is never polled again (it is dropped with
        // this one), so no broken invariant inside it can be observed.
        match catch_reported(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(panic) => Poll::Ready(Err(caught(panic))),
        }
    }
}

/// [`CaughtPanic::new`], out of line: the request path stays small.
#[cold]
#[inline(never)]
fn caught(payload: Box<dyn Any + Send>) -> CaughtPanic {
    CaughtPanic::new(payload)
}

/// The text a panic was raised with (`panic!("…")` gives a `&str` or a `String`).
pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> &str {
    crate::child::payload_text(panic).unwrap_or("a panic with a non-string payload")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The room taken for speed leaves nothing behind: a request starts with its `Peer` and
    /// the direct `Client` alone.
    #[test]
    fn a_connections_extensions_hold_the_peer_and_the_direct_client_alone() {
        let peer = Peer::Tcp("127.0.0.1:4000".parse().unwrap());
        let e = extensions_for(&peer).clone();
        assert_eq!(e.len(), 2);
        assert!(matches!(e.get::<Peer>(), Some(Peer::Tcp(a)) if a.port() == 4000));
        assert_eq!(e.get::<Client>(), Some(&Client::direct(&peer)));
        assert!(e.get::<Client>().is_some_and(|c| !c.forwarded));
    }
}
