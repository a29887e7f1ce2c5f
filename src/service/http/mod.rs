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
