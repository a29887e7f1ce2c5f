//! Configuration: one table of settings ([`settings`]), the command line built from it
//! ([`cli`]), the TOML file ([`file`](mod@file)), and the merge that turns them into one immutable
//! [`Config`] ([`merge`]).
//!
//! Precedence is gunicorn's: a flag on the command line wins over the config file, which wins
//! over the defaults. A [`Config`] is a list of services, each with its own kind, binds and
//! settings, plus the server-wide settings; one pool of workers serves them all.
//!
//! This module never opens a socket: a bad configuration is refused before anything running
//! is touched, which is what makes `kill -HUP` safe to try.

pub mod cli;
pub mod file;
pub mod merge;
pub mod settings;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub use cli::{Invocation, ServeArgs};
pub use file::FileConfig;
pub use merge::ConfigError;
pub use settings::{Kind, MAX_MAX_LINE, MAX_WORKERS, Value};

use crate::net::BindAddr;

/// `--max-line` when not given (chat and quote); the settings table's default, checked by a
/// test.
pub const DEFAULT_MAX_LINE: usize = 4096;

/// Where the server listens when no `--bind` is given (gunicorn's default too).
pub const DEFAULT_BIND: &str = "127.0.0.1:8000";

/// `--max-surge` when not given: 25% of the worker count, rounded down, at least 1 (as
/// Kubernetes' rolling updates default `maxSurge` to 25%).
pub fn default_max_surge(workers: usize) -> usize {
    (workers / 4).max(1)
}

/// What the arbiter calls at start and on every HUP to get the configuration to run: the
/// command line re-read with its config file for the `oxicorn` binary, or whatever a program
/// embedding oxicorn builds. It must not start threads or touch the runtime (it runs in the
/// arbiter).
pub type ConfigSource = Box<dyn FnMut() -> Result<Config, ConfigError>>;

/// The whole, checked configuration of one server. Built once per start or reload; never mutated.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The services, each on its own listeners; every worker serves them all.
    pub services: Vec<ServiceSpec>,
    /// How many workers to keep running.
    pub workers: usize,
    /// Heartbeat age after which a worker is killed; `None` turns the check off.
    pub timeout: Option<Duration>,
    /// How long in-flight connections may run on after a graceful stop or reload.
    pub graceful_timeout: Duration,
    /// Connections one worker serves at once, over all its services; more wait in the
    /// kernel's backlog.
    pub worker_connections: usize,
    /// The `listen(2)` backlog.
    pub backlog: u32,
    /// Extra workers allowed while workers are replaced (`--max-surge`): the default is 25%
    /// of `workers`, at least 1 ([`default_max_surge`]).
    pub max_surge: usize,
    /// How long a new worker may take to say ready before the roll stops (`--boot-timeout`).
    pub boot_timeout: Duration,
    /// Requests (connections for non-HTTP services) after which a worker is replaced
    /// (`--max-requests`); `None` never.
    pub max_requests: Option<u64>,
    /// The random extra added to `max_requests` per worker, `0..=max_requests_jitter`.
    pub max_requests_jitter: u64,
    /// Resident memory, in MiB, past which the arbiter replaces a worker; `None` never.
    pub max_worker_memory: Option<u64>,
    /// The pid file, written once listening.
    pub pidfile: Option<PathBuf>,
    /// The name process titles start with (`--proc-name`, alias `--name`, gunicorn's
    /// `proc_name`); `None`: the program's ([`crate::proctitle::name`]). A HUP that changes it
    /// retitles the arbiter and the new workers; the bus hub keeps its name until it restarts.
    pub proc_name: Option<String>,
    /// The least severe log level printed.
    pub log_level: LogLevel,
    /// Where logs go; `None` is stderr.
    pub error_logfile: Option<PathBuf>,
    /// The file these settings were read from, re-read on HUP.
    pub config_file: Option<PathBuf>,
    /// Who workers and the hub run as (`--user`, `--group`); `None` keeps the arbiter's.
    pub run_as: Option<RunAs>,
    /// The file mode mask of every process (`--umask`), applied at start.
    pub umask: Option<u32>,
    /// Started as root without `--user`, run workers as root anyway (`--allow-root`).
    pub allow_root: bool,
    /// Whether the services came from `[[service]]` tables (so `--print-config` writes them
    /// back that way) rather than from the command line's one service.
    pub service_tables: bool,
    /// Every server setting's effective value, in table order (`--print-config`,
    /// `--check-config`).
    pub values: Vec<(&'static str, Value)>,
}

/// The identity children switch to after the fork (gunicorn's `--user` and `--group`): the
/// arbiter keeps its own, to bind privileged ports and re-bind on HUP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// The user, if `--user` was given: its uid and name (the name picks its supplementary
    /// groups, as `initgroups(3)` does).
    pub user: Option<(u32, String)>,
    /// The group: `--group`, else the user's primary group.
    pub gid: u32,
}

/// One service: what it is, where it listens, and its own settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSpec {
    /// Its name in logs (`name = ...` in its `[[service]]` table, or its kind's name).
    pub name: String,
    /// The protocol and its settings.
    pub service: ServiceConfig,
    /// Its listeners, in the order given; no address belongs to two services.
    pub binds: Vec<BindAddr>,
    /// How long a connection may sit silent before it is closed; `None` never closes it.
    pub idle_timeout: Option<Duration>,
    /// Every setting of this service's effective value, in table order.
    pub values: Vec<(&'static str, Value)>,
}

/// The service and its own settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceConfig {
    /// Bytes in, the same bytes out.
    Echo,
    /// Files under a directory over HTTP/1.1.
    Static(StaticConfig),
    /// The chat room, shared by every worker through the bus.
    Chat {
        /// Longest line, in bytes without its terminator; longer ones are refused.
        max_line: usize,
    },
    /// The quote service; the current quote is held by the bus.
    Quote {
        /// The quote served until a client sends one.
        quote: String,
        /// Longest line, in bytes without its terminator.
        max_line: usize,
    },
    /// A program's own HTTP application ([`crate::server::Server`]); the app itself comes
    /// from the program's factory, called in each worker.
    App(AppConfig),
}

/// `app`'s settings, checked: how the program's application is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppConfig {
    /// Limits, deadlines and trusted proxies.
    pub http: crate::service::http::app::HttpSettings,
    /// The access log: `None` off, `-` stdout, otherwise a file opened for append.
    pub access_logfile: Option<PathBuf>,
    /// The access log's line in gunicorn's `%(atom)s` syntax, checked to parse; `None` is
    /// [`crate::service::http::access_log::DEFAULT_FORMAT`].
    pub access_logformat: Option<String>,
}

/// `static`'s settings, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticConfig {
    /// The directory served: absolute, symlinks resolved, checked to be a directory.
    pub root: PathBuf,
    /// Idle time allowed between requests on a kept-alive connection; zero = no keep-alive.
    pub keep_alive: Duration,
    /// Time allowed from a request's first byte (or the accept) to the end of its head.
    pub header_timeout: Duration,
    /// Longest request line, in bytes (414 beyond).
    pub limit_request_line: usize,
    /// Most header fields (431 beyond).
    pub limit_request_fields: usize,
    /// Longest header field, name and value, in bytes (431 beyond).
    pub limit_request_field_size: usize,
    /// Serve symlinks resolving outside the root.
    pub follow_symlinks: bool,
    /// Serve and list names starting with `.`.
    pub show_hidden: bool,
    /// List directories that have no `index.html`.
    pub listing: bool,
    /// The access log: `None` off, `-` stdout, otherwise a file opened for append.
    pub access_logfile: Option<PathBuf>,
    /// The access log's line, in gunicorn's `%(atom)s` syntax, checked to parse; `None` is
    /// [`crate::service::http::access_log::DEFAULT_FORMAT`].
    pub access_logformat: Option<String>,
    /// `Cache-Control: max-age` sent with files (200, 206, 304), in whole seconds; `None`
    /// sends none, leaving freshness to the cache's heuristics (RFC 9111 §4.2.2).
    pub max_age: Option<Duration>,
    /// How long a cached open file's size and mtime are trusted without an `fstat`
    /// (nginx's `open_file_cache_valid`); zero checks on every request, so a write in place
    /// is seen by the next response. See [`crate::service::http::static_files::files::FileCache`].
    pub open_file_cache_valid: Duration,
}

impl ServiceConfig {
    /// The kind of service.
    pub fn kind(&self) -> Kind {
        match self {
            ServiceConfig::Echo => Kind::Echo,
            ServiceConfig::Static(_) => Kind::Static,
            ServiceConfig::Chat { .. } => Kind::Chat,
            ServiceConfig::Quote { .. } => Kind::Quote,
            ServiceConfig::App(_) => Kind::App,
        }
    }

    /// The name used on the command line and in logs.
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// The service's access log file, if it writes one to a file (not off, not `-`).
    pub fn access_logfile(&self) -> Option<&std::path::Path> {
        let path = match self {
            ServiceConfig::Static(s) => s.access_logfile.as_deref(),
            ServiceConfig::App(a) => a.access_logfile.as_deref(),
            _ => None,
        }?;
        (path.as_os_str() != "-").then_some(path)
    }

    /// Whether the service shares state across workers, so the arbiter must run the bus hub.
    pub fn needs_bus(&self) -> bool {
        matches!(
            self,
            ServiceConfig::Chat { .. } | ServiceConfig::Quote { .. }
        )
    }
}

impl Config {
    /// Every listen address of every service, in order.
    pub fn binds(&self) -> impl Iterator<Item = &BindAddr> {
        self.services.iter().flat_map(|s| s.binds.iter())
    }

    /// Whether any service needs the bus hub.
    pub fn needs_bus(&self) -> bool {
        self.services.iter().any(|s| s.service.needs_bus())
    }

    /// The services' names, for log lines (`static`, `static, chat`).
    pub fn service_names(&self) -> String {
        let names: Vec<&str> = self.services.iter().map(|s| s.name.as_str()).collect();
        names.join(", ")
    }
}

/// Log levels by gunicorn's names (`warning`, `critical`), with tracing's accepted too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Everything, including per-connection details.
    Debug,
    /// Lifecycle: listening, workers booted and exited, reloads.
    Info,
    /// Something an operator may want to look at.
    Warning,
    /// Something an operator must act on.
    Error,
    /// Only what stops the server.
    Critical,
}

impl LogLevel {
    /// The matching tracing filter (`critical` maps to error, tracing's highest).
    pub fn filter(self) -> tracing::level_filters::LevelFilter {
        use tracing::level_filters::LevelFilter;
        match self {
            LogLevel::Debug => LevelFilter::DEBUG,
            LogLevel::Info => LevelFilter::INFO,
            LogLevel::Warning => LevelFilter::WARN,
            LogLevel::Error | LogLevel::Critical => LevelFilter::ERROR,
        }
    }
}

impl std::str::FromStr for LogLevel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "debug" | "trace" => Ok(LogLevel::Debug),
            "info" => Ok(LogLevel::Info),
            "warning" | "warn" => Ok(LogLevel::Warning),
            "error" => Ok(LogLevel::Error),
            "critical" | "crit" => Ok(LogLevel::Critical),
            _ => Err(format!(
                "unknown log level `{s}`: expected debug, info, warning, error or critical"
            )),
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warning => "warning",
            LogLevel::Error => "error",
            LogLevel::Critical => "critical",
        })
    }
}

/// Parses a duration the way operators write one: `30` or `2.5` (seconds), `500ms`, `10s`,
/// `5m`, `1h`.
///
/// # Errors
/// A message naming the value, for anything else (negative, not a number, unknown unit).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (t, 1.0)
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 && v * scale < 1e9 => {
            Ok(Duration::from_secs_f64(v * scale))
        }
        _ => Err(format!(
            "invalid duration `{s}`: expected seconds such as 30 or 2.5, or 500ms, 10s, 5m, 1h"
        )),
    }
}

/// Shows a duration as an operator would write it (`30s`, `1.5s`, `250ms`, `off` for zero).
pub fn show_duration(d: Option<Duration>) -> String {
    match d {
        None => "off".into(),
        Some(d) if d.subsec_nanos() == 0 => format!("{}s", d.as_secs()),
        Some(d) if d < Duration::from_secs(1) => format!("{}ms", d.as_millis()),
        Some(d) => format!("{}s", d.as_secs_f64()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_operator_units() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "-1", "abc", "1d", "NaN", "inf", "1e300"] {
            assert!(parse_duration(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn durations_shown_back() {
        assert_eq!(show_duration(None), "off");
        assert_eq!(show_duration(Some(Duration::from_secs(30))), "30s");
        assert_eq!(show_duration(Some(Duration::from_millis(250))), "250ms");
        assert_eq!(show_duration(Some(Duration::from_millis(1500))), "1.5s");
    }

    #[test]
    fn log_levels_by_either_name() {
        assert_eq!("WARNING".parse(), Ok(LogLevel::Warning));
        assert_eq!("warn".parse(), Ok(LogLevel::Warning));
        assert_eq!("critical".parse(), Ok(LogLevel::Critical));
        assert!("loud".parse::<LogLevel>().is_err());
    }
}
