//! HTTP pieces shared by every HTTP service, and the HTTP services themselves.
//!
//! Owns the HTTP vocabulary that is not a protocol engine: the `Date` header and the other date
//! forms ([`date`]), the access log ([`access_log`]), the static file service
//! ([`static_files`]) and the hook that serves an application's own `tower::Service` ([`app`]). It may use `net` (streams) and the service context; it must not touch
//! the arbiter, the worker's accept loop or the bus.

pub mod access_log;
pub mod app;
pub mod date;
pub mod static_files;

use std::time::Duration;

/// A lingering close's bounds, for every HTTP service (nginx's `lingering_close`; RFC 9112
/// §9.6 has a server close in stages): once its side is shut, what the client still sends is
/// read in [`LINGER_BUF`]-byte reads and dropped until its EOF, for at most this long...
pub(crate) const LINGER: Duration = Duration::from_secs(2);

/// ... and at most this many reads (256 KiB in all).
pub(crate) const LINGER_READS: u8 = 64;

/// The size of one lingering read, in bytes.
pub(crate) const LINGER_BUF: usize = 4096;
