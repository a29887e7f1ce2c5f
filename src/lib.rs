//! oxicorn: a pre-fork network server for Linux.
//!
//! One single-threaded arbiter binds the listeners and keeps a pool of forked worker processes
//! alive; each worker runs its own tokio runtime and serves many connections. The arbiter
//! respawns workers that die, kills those whose heartbeat stops, and reloads or rescales the
//! pool on signals without refusing a connection.
//!
//! # Layout
//!
//! - [`config`]: flags, the TOML file, defaults and validation, merged into one immutable
//!   [`config::Config`]. Opens no socket.
//! - [`arbiter`]: the master process: binds (through [`net::listener`]), signals
//!   ([`arbiter::signals`]), the worker table, the pid file. Never starts a thread or runtime.
//! - [`scoreboard`]: shared memory with one slot per worker (heartbeat and counters), the only
//!   memory both sides touch.
//! - [`child`]: what every forked child does first (parent-death signal, orphan check,
//!   runtime, signals, heartbeat, ready message); workers and the hub build on it.
//! - [`worker`]: the code that runs after fork: runtime, accept loop, connection cap,
//!   heartbeat, graceful drain.
//! - [`service`]: the protocols (`static`, the default HTTP file server; `echo`, `chat`,
//!   `quote`) serving one connection each.
//! - [`bus`]: every message and shared value that crosses workers: the hub process the
//!   arbiter supervises, and the client each worker keeps connected to it.
//! - [`connect`]: `oxicorn connect`, a line client with clear errors (not part of the server).
//! - [`net`]: bind addresses, listeners, and the stream type services read and write.
//! - [`proctitle`]: the process titles `ps` and `top` show.
//! - [`log`]: the line format and the log file reopened on USR1.
//! - [`exit`]: every exit code, and who reacts to each.
//! - [`server`]: the embedding API, [`Server`]: a program's own `tower::Service` (an axum
//!   `Router`) served by the pool, with oxicorn's CLI.
//! - [`shutdown`]: the worker's graceful stop as the application sees it ([`Shutdown`]).
//! - [`program`](mod@program): who the process is ([`Program`]): the name and version
//!   `--version` prints and the arbiter's lines name.
//! - [`sync`]: the one way shared state is locked.
//!
//! # Running your own app
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     // This program's name and version (its Cargo package's), for `--version` and the
//!     // server's log lines; `oxicorn::Server::from_args()` works too, knowing only the
//!     // executable's name.
//!     oxicorn::program!()
//!         .from_args()
//!         .app(|| async {
//!             // Called in each worker after the fork; may open pools, may fail.
//!             Ok::<_, std::io::Error>(tower::service_fn(|req: oxicorn::AppRequest| async move {
//!                 let client = req.extensions().get::<oxicorn::Client>().cloned();
//!                 let text = format!("hello, {:?}", client.and_then(|c| c.ip));
//!                 Ok::<_, std::convert::Infallible>(http::Response::new(text))
//!             }))
//!         })
//!         .run()
//! }
//! ```
//! With axum, the factory returns a `Router`; `examples/axum_app.rs` is a complete program.
//! [`program!`] reads the calling crate's binary name and version, so `myapp --version`
//! prints `myapp 1.2.0 (oxicorn 0.1.0, commit 1a2b3c4d5e)` and an upgrade is logged as
//! `upgrade: myapp 1.2.0 -> myapp 1.3.0`; [`Program::new`] takes them from elsewhere, and
//! [`Server::from_args`] serves a program known by its executable's name alone.
//!
//! Each request carries the socket's [`Peer`] and the [`Client`] as extensions. Its body fails
//! with [`ClientBodyTimeout`] when the client leaves it silent for `--client-body-timeout`
//! (the client then gets 408 whatever the handler answers). [`StaticFiles`] serves a directory
//! as a `tower::Service`; mounted with axum's `nest_service("/static", ..)`, its listings and
//! 404 page link below `/static/` (the mount point is found from the request).
//!
//! At a graceful stop (TERM, a HUP reload, TTOU, an upgrade) requests in flight finish, but
//! a response that never ends (server-sent events, a WebSocket) would run on until
//! `--graceful-timeout` cuts it. [`Shutdown::current`] is the worker's stop as the app sees
//! it: await [`Shutdown::stopped`] (or check [`Shutdown::is_stopping`]) to end such a stream
//! itself, with a last event or a WebSocket Close frame.

#![warn(missing_docs)]

/// This build's version and commit, as `--version` prints it: `0.1.0 (commit 1a2b3c4d5e)`, or
/// `(commit unknown)` when built outside a git checkout (`build.rs`).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("OXICORN_COMMIT"),
    ")"
);

pub mod arbiter;
pub mod bus;
pub mod child;
pub mod config;
pub mod connect;
pub mod exit;
pub mod log;
pub mod net;
pub mod proctitle;
pub mod program;
pub mod scoreboard;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod sync;
pub mod worker;

pub use net::Peer;
pub use program::Program;
pub use server::Server;
pub use service::http::app::{
    AppBody, AppRequest, Application, Client, ClientBodyTimeout, StaticFiles,
};
pub use shutdown::Shutdown;
