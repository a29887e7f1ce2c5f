//! Services: the protocols a worker speaks on its connections.
//!
//! A service owns bytes ↔ messages for one connection, given the stream and a
//! [`ConnContext`]. It knows no pids, signals or config format, and spawns no task the worker
//! cannot wait for. A closed set is an enum that delegates (mini-redis `Command::apply`).

pub mod chat;
pub mod echo;
pub mod http;
pub mod lines;
pub mod quote;
pub mod static_files;

use std::io;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, ServiceConfig};
use crate::net::{Peer, Stream};
use crate::scoreboard::Slot;

/// What one connection is told about its surroundings.
pub struct ConnContext {
    /// The client.
    pub peer: Peer,
    /// Cancelled when the worker begins a graceful stop. Services that can finish early
    /// (between requests) should; others run on until the worker's deadline cuts them.
    pub stop: CancellationToken,
    /// Close the connection after this long without progress; `None` = never.
    pub idle_timeout: Option<Duration>,
    /// The worker's scoreboard slot, for counters.
    pub slot: &'static Slot,
}

/// What the accept loop runs for each connection. Implemented by [`Service`] (the built-in
/// protocols); the accept loop is generic over it so it can be exercised with any handler.
///
/// A panic inside `serve` ends that connection only: the task is dropped (closing the
/// stream and releasing the connection slot) and the worker goes on.
pub trait Serve: Send + Sync + 'static {
    /// Serves one connection to its end.
    fn serve(&self, stream: Stream, ctx: ConnContext) -> impl Future<Output = ()> + Send;
}

impl Serve for Service {
    fn serve(&self, stream: Stream, ctx: ConnContext) -> impl Future<Output = ()> + Send {
        Service::serve(self, stream, ctx)
    }
}

/// Every built-in service, as configured for one worker.
#[derive(Debug)]
pub enum Service {
    /// [`echo`].
    Echo,
    /// [`static_files`].
    Static(Box<static_files::StaticService>),
    /// [`chat`]: the room, shared with the other workers through the bus.
    Chat(chat::Chat),
    /// [`quote`]: the quote, held by the bus.
    Quote(quote::Quote),
}

impl Service {
    /// Prepares the service in a freshly booted worker.
    ///
    /// # Errors
    /// If the service cannot start (a worker boot error).
    pub fn for_worker(config: &Config) -> io::Result<Service> {
        // Workers are the arbiter's children, and the hub's address is named after the
        // arbiter's pid (`worker::run` checked `getppid()` is still the arbiter).
        let bus = || crate::bus::Bus::embedded(nix::unistd::getppid().as_raw() as u32);
        Ok(match &config.service {
            ServiceConfig::Echo => Service::Echo,
            ServiceConfig::Static(c) => {
                Service::Static(Box::new(static_files::StaticService::open(c)?))
            }
            ServiceConfig::Chat { max_line } => Service::Chat(chat::Chat::new(bus(), *max_line)),
            ServiceConfig::Quote { max_line, .. } => {
                Service::Quote(quote::Quote::new(bus(), *max_line))
            }
        })
    }

    /// Reopens the service's own log files (USR1); the worker has reopened its log already.
    ///
    /// # Errors
    /// If a file cannot be reopened; the old one stays in use.
    pub fn reopen_logs(&self) -> io::Result<()> {
        match self {
            Service::Echo => Ok(()),
            Service::Static(s) => s.reopen_logs(),
            Service::Chat(_) | Service::Quote(_) => Ok(()),
        }
    }

    /// Serves one connection to its end. Errors end this connection only, and are logged at
    /// debug level: a client that vanishes is routine, not an incident.
    pub async fn serve(&self, stream: Stream, ctx: ConnContext) {
        let result = match self {
            Service::Echo => echo::serve(stream, &ctx).await,
            Service::Static(s) => static_files::serve(stream, &ctx, s).await,
            Service::Chat(chat) => chat.serve(stream, &ctx).await,
            Service::Quote(quote) => quote.serve(stream, &ctx).await,
        };
        if let Err(err) = result {
            tracing::debug!(peer = %ctx.peer, cause = %err, "connection ended with an error");
        }
    }
}

/// Runs `fut` with the idle deadline, if any.
///
/// # Errors
/// `TimedOut` when the deadline passes first, otherwise what `fut` returns.
pub async fn idle<T>(
    limit: Option<Duration>,
    fut: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    match limit {
        None => fut.await,
        Some(d) => match tokio::time::timeout(d, fut).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout")),
        },
    }
}
