//! The one table of settings. Every setting is written once, here: its name (the TOML key;
//! the flag is the same with dashes), its short flag, which services it belongs to, its type
//! and range, its default and its help. The command line ([`super::cli`]), the config file
//! ([`super::file`]), the merge ([`super::merge`]), `--print-config` and `--check-config` all
//! read this table, so a default or a range cannot disagree between them.
//!
//! This module owns the table and the parsing of one value; it opens no file and knows
//! nothing of clap or TOML.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::{LogLevel, parse_duration, show_duration};
use crate::net::BindAddr;
use crate::service::http::access_log::LogFormat;
use crate::service::http::app::ForwardedAllowIps;

/// The services a setting can belong to. The command line names them; the file's
/// `[[service]]` tables say `kind = "..."`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `static`: files over HTTP.
    Static,
    /// `echo`: bytes back.
    Echo,
    /// `chat`: the room.
    Chat,
    /// `quote`: one quote for the server.
    Quote,
    /// `app`: a program's own `tower::Service`, for programs that embed oxicorn
    /// ([`crate::server::Server`]); the `oxicorn` binary has none to serve.
    App,
}

impl Kind {
    /// Every kind, in the order `--help` shows them.
    pub const ALL: [Kind; 4] = [Kind::Static, Kind::Echo, Kind::Chat, Kind::Quote];

    /// The name on the command line and in the file (`kind = "static"`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Static => "static",
            Kind::Echo => "echo",
            Kind::Chat => "chat",
            Kind::Quote => "quote",
            Kind::App => "app",
        }
    }

    /// The kind named `name`, if any (`app` too, though it is not in [`Kind::ALL`]: only a
    /// program embedding oxicorn can serve it).
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .chain([Kind::App])
            .find(|k| k.name() == name)
    }
}

/// Which part of the configuration a setting belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The arbiter and the pool: one value for the whole server (top level of the file).
    Server,
    /// Every service has its own value (in each `[[service]]` table).
    AnyService,
    /// Only these services have it.
    Services(&'static [Kind]),
}

impl Scope {
    /// Whether a service of `kind` has this setting.
    pub fn has(self, kind: Kind) -> bool {
        match self {
            Scope::Server => false,
            Scope::AnyService => true,
            Scope::Services(kinds) => kinds.contains(&kind),
        }
    }
}

/// What zero means for a duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zero {
    /// Zero is a value like any other (a keep-alive of 0 means no keep-alive).
    Allowed,
    /// Zero turns the feature off (shown as `off`).
    Off,
    /// Zero is refused, with this reason.
    Refused(&'static str),
}

/// A setting's type, with its range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    /// Seconds (`30`, `2.5`) or with a unit (`500ms`, `5m`); `min` applies to non-zero values.
    Duration {
        /// What zero means.
        zero: Zero,
        /// The shortest non-zero value.
        min: Duration,
    },
    /// A whole number in `min..=max`.
    Count {
        /// Smallest accepted.
        min: u64,
        /// Largest accepted.
        max: u64,
    },
    /// On or off; on the command line a flag without a value.
    Flag,
    /// A file or directory path.
    Path,
    /// Text of at most `max` bytes, in `syntax`.
    Text {
        /// Longest accepted, in bytes.
        max: usize,
        /// What the text must parse as.
        syntax: Syntax,
    },
    /// Listen addresses; repeatable on the command line, a string or a list in the file.
    Binds,
    /// A log level.
    Level,
}

/// The syntax of a [`Type::Text`] value, checked where the value is parsed: so a bad value
/// in a config file is reported with its line, beside every other problem of the file, and a
/// bad flag the same way as a bad number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    /// Any text.
    Free,
    /// An access log format (gunicorn's `%(atom)s`, [`LogFormat::parse`]).
    LogFormat,
    /// A `--forwarded-allow-ips` list ([`ForwardedAllowIps`]).
    AllowIps,
    /// A name shown as it is, in `ps` and `/proc/PID/comm` (`--proc-name`): no control
    /// character and no bidirectional control ([`crate::log::must_escape`]), which would
    /// forge a line or reorder one where tools print it unescaped (`pgrep -l`, `top`, scripts
    /// reading `comm`).
    Name,
}

/// A setting's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Default {
    /// No value (the feature is off, or the path is not set).
    None,
    /// This text, parsed like a value given by the user.
    Text(&'static str),
    /// One per CPU (workers).
    Cpus,
    /// Depends on the service: `(kind, text)` pairs, for every kind in the scope.
    PerKind(&'static [(Kind, &'static str)]),
}

/// One row of the table.
#[derive(Debug)]
pub struct Setting {
    /// The TOML key; the long flag is the same with `-` for `_`.
    pub key: &'static str,
    /// The short flag, gunicorn's where it has one.
    pub short: Option<char>,
    /// Who has it.
    pub scope: Scope,
    /// Its type and range.
    pub ty: Type,
    /// Its default.
    pub default: Default,
    /// The placeholder in `--help` (`SECS`, `N`, `FILE`).
    pub value_name: &'static str,
    /// One line of help, without the default (added from [`Setting::default`]).
    pub help: &'static str,
}

/// A parsed value of a setting.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// [`Type::Duration`]; `Duration::ZERO` for off.
    Duration(Duration),
    /// [`Type::Count`].
    Count(u64),
    /// [`Type::Flag`].
    Flag(bool),
    /// [`Type::Path`].
    Path(PathBuf),
    /// [`Type::Text`].
    Text(String),
    /// [`Type::Binds`].
    Binds(Vec<BindAddr>),
    /// [`Type::Level`].
    Level(LogLevel),
}

/// The most workers one arbiter runs; a reload briefly runs twice this many.
pub const MAX_WORKERS: usize = 512;

/// The largest `--max-line`: one line must fit in one bus frame ([`crate::bus::MAX_FRAME`]).
pub const MAX_MAX_LINE: usize = 1 << 20;

const STATIC: &[Kind] = &[Kind::Static];
/// HTTP services: the limits and logs they share.
const HTTP: &[Kind] = &[Kind::Static, Kind::App];
const APP: &[Kind] = &[Kind::App];
const LINES: &[Kind] = &[Kind::Chat, Kind::Quote];

/// Every setting, in the order `--help`, `--print-config` and `--check-config` show them.
pub static SETTINGS: &[Setting] = &[
    Setting {
        key: "bind",
        short: Some('b'),
        scope: Scope::AnyService,
        ty: Type::Binds,
        default: Default::Text("127.0.0.1:8000"),
        value_name: "ADDR",
        help: "Listen here: HOST:PORT, [IPV6]:PORT, :PORT (all interfaces), unix:PATH, fd://N or systemd:NAME (socket activation); repeatable",
    },
    Setting {
        key: "workers",
        short: Some('w'),
        scope: Scope::Server,
        ty: Type::Count {
            min: 1,
            max: MAX_WORKERS as u64,
        },
        default: Default::Cpus,
        value_name: "N",
        help: "Worker processes",
    },
    Setting {
        key: "timeout",
        short: Some('t'),
        scope: Scope::Server,
        ty: Type::Duration {
            zero: Zero::Off,
            min: Duration::from_secs(1),
        },
        default: Default::Text("30"),
        value_name: "SECS",
        help: "Kill a worker whose heartbeat is older than this; 0 turns the check off",
    },
    Setting {
        key: "graceful_timeout",
        short: None,
        scope: Scope::Server,
        ty: Type::Duration {
            zero: Zero::Allowed,
            min: Duration::ZERO,
        },
        default: Default::Text("30"),
        value_name: "SECS",
        help: "On a stop or reload, how long connections may run on before they are cut",
    },
    Setting {
        key: "worker_connections",
        short: None,
        scope: Scope::Server,
        ty: Type::Count {
            min: 1,
            max: 1 << 20,
        },
        default: Default::Text("1000"),
        value_name: "N",
        help: "Connections one worker serves at once; more wait in the backlog",
    },
    Setting {
        key: "backlog",
        short: None,
        scope: Scope::Server,
        ty: Type::Count { min: 1, max: 65535 },
        default: Default::Text("2048"),
        value_name: "N",
        help: "Pending connections the kernel queues per listener",
    },
    Setting {
        key: "max_surge",
        short: None,
        scope: Scope::Server,
        ty: Type::Count {
            min: 1,
            max: MAX_WORKERS as u64,
        },
        default: Default::None,
        value_name: "N",
        help: "Extra workers allowed while workers are replaced (reload, upgrade, recycling); default 25% of --workers, at least 1",
    },
    Setting {
        key: "boot_timeout",
        short: None,
        scope: Scope::Server,
        ty: Type::Duration {
            zero: Zero::Refused("0 would stop every roll at once: give a time such as 30"),
            min: Duration::from_millis(100),
        },
        default: Default::Text("30"),
        value_name: "SECS",
        help: "A new worker not ready within this stops the roll (reload, upgrade) and the old generation stays",
    },
    Setting {
        key: "max_requests",
        short: None,
        scope: Scope::Server,
        ty: Type::Count {
            min: 0,
            max: u64::MAX >> 1,
        },
        default: Default::Text("0"),
        value_name: "N",
        help: "Replace a worker after this many requests (connections for non-HTTP services); 0 = never",
    },
    Setting {
        key: "max_requests_jitter",
        short: None,
        scope: Scope::Server,
        ty: Type::Count {
            min: 0,
            max: u64::MAX >> 2,
        },
        default: Default::Text("0"),
        value_name: "N",
        help: "Add a random 0..N to --max-requests per worker, so workers do not all recycle at once",
    },
    Setting {
        key: "max_worker_memory",
        short: None,
        scope: Scope::Server,
        ty: Type::Count {
            min: 0,
            max: 1 << 30,
        },
        default: Default::Text("0"),
        value_name: "MIB",
        help: "Replace a worker whose resident memory passes this many MiB (checked by the arbiter); 0 = never",
    },
    Setting {
        key: "pid",
        short: Some('p'),
        scope: Scope::Server,
        ty: Type::Path,
        default: Default::None,
        value_name: "FILE",
        help: "Write the arbiter's pid to this file once listening; removed on exit",
    },
    Setting {
        key: "proc_name",
        short: Some('n'),
        scope: Scope::Server,
        ty: Type::Text {
            max: 64,
            syntax: Syntax::Name,
        },
        default: Default::None,
        value_name: "NAME",
        help: "The name process titles start with ('NAME: arbiter [...]', 'NAME: worker 1 [gen 1]'), gunicorn's --name (also accepted) [default: the program's name, oxicorn for oxicorn]",
    },
    Setting {
        key: "log_level",
        short: None,
        scope: Scope::Server,
        ty: Type::Level,
        default: Default::Text("info"),
        value_name: "LEVEL",
        help: "debug, info, warning, error or critical",
    },
    Setting {
        key: "error_logfile",
        short: None,
        scope: Scope::Server,
        ty: Type::Path,
        default: Default::None,
        value_name: "FILE",
        help: "Write logs to this file ('-' = stderr); reopened on USR1",
    },
    Setting {
        key: "user",
        short: Some('u'),
        scope: Scope::Server,
        ty: Type::Text {
            max: 256,
            syntax: Syntax::Free,
        },
        default: Default::None,
        value_name: "USER",
        help: "Run workers and the hub as this user (name or uid); the arbiter binds first, as the user that started it",
    },
    Setting {
        key: "group",
        short: Some('g'),
        scope: Scope::Server,
        ty: Type::Text {
            max: 256,
            syntax: Syntax::Free,
        },
        default: Default::None,
        value_name: "GROUP",
        help: "Run workers and the hub with this group (name or gid) [default: the user's group]",
    },
    Setting {
        key: "umask",
        short: Some('m'),
        scope: Scope::Server,
        ty: Type::Text {
            max: 8,
            syntax: Syntax::Free,
        },
        default: Default::None,
        value_name: "MODE",
        help: "The file mode mask of every process (octal, as 0o22 or 022), for unix sockets and log files",
    },
    Setting {
        key: "allow_root",
        short: None,
        scope: Scope::Server,
        ty: Type::Flag,
        default: Default::Text("false"),
        value_name: "",
        help: "Started as root without --user, run workers as root anyway (refused otherwise)",
    },
    Setting {
        key: "idle_timeout",
        short: None,
        scope: Scope::AnyService,
        ty: Type::Duration {
            zero: Zero::Off,
            min: Duration::ZERO,
        },
        // For static this bounds a stalled write (a client that stops reading); waiting for
        // requests is bounded by keep_alive and header_timeout instead. Chat is 0: a member
        // may lurk, reading only, for as long as it likes.
        default: Default::PerKind(&[
            (Kind::Static, "60"),
            (Kind::Echo, "300"),
            (Kind::Chat, "0"),
            (Kind::Quote, "30"),
            (Kind::App, "60"),
        ]),
        value_name: "SECS",
        help: "Close a connection silent for this long; 0 = never",
    },
    Setting {
        key: "root",
        short: None,
        scope: Scope::Services(STATIC),
        ty: Type::Path,
        default: Default::Text("."),
        value_name: "DIR",
        help: "The directory to serve (on the command line: the DIR argument)",
    },
    Setting {
        key: "keep_alive",
        short: None,
        scope: Scope::Services(HTTP),
        ty: Type::Duration {
            zero: Zero::Allowed,
            min: Duration::ZERO,
        },
        default: Default::Text("5"),
        value_name: "SECS",
        help: "Seconds an idle kept-alive connection waits for its next request; 0 = one request per connection",
    },
    Setting {
        key: "header_timeout",
        short: None,
        scope: Scope::Services(HTTP),
        ty: Type::Duration {
            zero: Zero::Refused(
                "0 would let a silent client hold a connection forever: give a time such as 10",
            ),
            min: Duration::ZERO,
        },
        default: Default::Text("10"),
        value_name: "SECS",
        help: "How long a client may take to send a request head; slower ones get 408",
    },
    Setting {
        key: "limit_request_line",
        short: None,
        scope: Scope::Services(HTTP),
        ty: Type::Count { min: 1, max: 65536 },
        default: Default::Text("4094"),
        value_name: "BYTES",
        help: "Longest request line in bytes; longer ones get 414",
    },
    Setting {
        key: "limit_request_fields",
        short: None,
        scope: Scope::Services(HTTP),
        ty: Type::Count { min: 1, max: 32768 },
        default: Default::Text("100"),
        value_name: "N",
        help: "Most header fields in one request; more get 431",
    },
    Setting {
        key: "limit_request_field_size",
        short: None,
        scope: Scope::Services(HTTP),
        ty: Type::Count { min: 1, max: 65536 },
        default: Default::Text("8190"),
        value_name: "BYTES",
        help: "Longest header field (name and value) in bytes; longer ones get 431",
    },
    Setting {
        key: "follow_symlinks",
        short: None,
        scope: Scope::Services(STATIC),
        ty: Type::Flag,
        default: Default::Text("false"),
        value_name: "",
        help: "Serve symlinks that point outside DIR (refused with 403 otherwise)",
    },
    Setting {
        key: "show_hidden",
        short: None,
        scope: Scope::Services(STATIC),
        ty: Type::Flag,
        default: Default::Text("false"),
        value_name: "",
        help: "Serve and list dotfiles and dot-directories (404 otherwise)",
    },
    Setting {
        key: "no_listing",
        short: None,
        scope: Scope::Services(STATIC),
        ty: Type::Flag,
        default: Default::Text("false"),
        value_name: "",
        help: "Answer 404 for directories without index.html instead of listing them",
    },
    Setting {
        key: "access_logfile",
        short: None,
        scope: Scope::Services(HTTP),
        ty: Type::Path,
        default: Default::None,
        value_name: "FILE",
        help: "Write one line per request here ('-' = stdout), gunicorn's format plus the response time",
    },
    Setting {
        key: "access_logformat",
        short: None,
        scope: Scope::Services(HTTP),
        ty: Type::Text {
            max: 4096,
            syntax: Syntax::LogFormat,
        },
        default: Default::None,
        value_name: "FORMAT",
        help: "The access log line in gunicorn's %(atom)s syntax: %(h)s %(l)s %(u)s %(t)s %(r)s \
               %(m)s %(U)s %(q)s %(H)s %(s)s %(b)s %(B)s %(f)s %(a)s %(T)s %(M)s %(D)s %(L)s \
               %(p)s, a request header %({name}i)s, a response header %({name}o)s [default: '%(h)s %(l)s %(u)s %(t)s \"%(r)s\" %(s)s %(b)s \"%(f)s\" \"%(a)s\" %(D)s']",
    },
    Setting {
        key: "limit_request_body",
        short: None,
        scope: Scope::Services(APP),
        ty: Type::Count {
            min: 0,
            max: u64::MAX,
        },
        default: Default::Text("0"),
        value_name: "BYTES",
        help: "Largest request body in bytes; larger ones get 413 before the app reads more; 0 = no limit",
    },
    Setting {
        key: "request_timeout",
        short: None,
        scope: Scope::Services(APP),
        ty: Type::Duration {
            zero: Zero::Off,
            min: Duration::ZERO,
        },
        default: Default::Text("0"),
        value_name: "SECS",
        help: "Longest a handler may take to answer; slower ones get 503 and are dropped; 0 = no limit",
    },
    Setting {
        // nginx's name and default: a gap between two reads of one request body, not the
        // whole body (a slow upload that keeps arriving is never cut).
        key: "client_body_timeout",
        short: None,
        scope: Scope::Services(APP),
        ty: Type::Duration {
            zero: Zero::Off,
            min: Duration::ZERO,
        },
        default: Default::Text("60"),
        value_name: "SECS",
        help: "Longest silence between two reads of a request body; then the handler's read fails and the client gets 408; 0 = no limit",
    },
    Setting {
        key: "forwarded_allow_ips",
        short: None,
        scope: Scope::Services(APP),
        ty: Type::Text {
            max: 65536,
            syntax: Syntax::AllowIps,
        },
        default: Default::Text("127.0.0.1,::1"),
        value_name: "IPS",
        help: "Peers (addresses, networks, or * for all) whose X-Forwarded-For, X-Forwarded-Proto and Forwarded headers are believed",
    },
    Setting {
        key: "max_age",
        short: None,
        scope: Scope::Services(STATIC),
        ty: Type::Duration {
            zero: Zero::Allowed,
            min: Duration::ZERO,
        },
        default: Default::None,
        value_name: "SECS",
        help: "Send Cache-Control: max-age=SECS with files (not listings or errors); none by default",
    },
    Setting {
        // nginx's name and meaning (`open_file_cache_valid`), but 0 by default: nginx trusts
        // for 60 s, which a server whose files are written in place should opt into.
        key: "open_file_cache_valid",
        short: None,
        scope: Scope::Services(STATIC),
        ty: Type::Duration {
            zero: Zero::Allowed,
            min: Duration::ZERO,
        },
        default: Default::Text("0"),
        value_name: "SECS",
        help: "Trust a cached open file's size and mtime for SECS without an fstat, as nginx's open_file_cache_valid, and serve files of up to 16 KiB from memory meanwhile (8 MiB per worker at most): until then a file written in place is served as it was (a small one with its old bytes and ETag; a larger one with its old length and ETag, never more bytes than the file holds); 0 = check every request and hold no bytes",
    },
    Setting {
        key: "max_line",
        short: None,
        scope: Scope::Services(LINES),
        ty: Type::Count {
            min: 1,
            max: MAX_MAX_LINE as u64,
        },
        default: Default::Text("4096"),
        value_name: "BYTES",
        help: "Longest line accepted, in bytes; longer lines get an error",
    },
    Setting {
        key: "quote",
        short: None,
        scope: Scope::Services(&[Kind::Quote]),
        ty: Type::Text {
            max: MAX_MAX_LINE,
            syntax: Syntax::Free,
        },
        default: Default::Text("An apple a day keeps the doctor away"),
        value_name: "TEXT",
        help: "The quote served until a client sends another",
    },
];

/// The setting called `key` (the TOML key, underscores).
///
/// # Panics
/// If there is no such setting: keys are written in code, and a test reads every one.
pub fn setting(key: &str) -> &'static Setting {
    SETTINGS
        .iter()
        .find(|s| s.key == key)
        .unwrap_or_else(|| panic!("no setting `{key}` in the table"))
}

impl Setting {
    /// The long flag: the key with dashes.
    pub fn flag(&self) -> String {
        self.key.replace('_', "-")
    }

    /// The environment variable that sets it when no flag does: `OXICORN_` and the key in
    /// capitals (`OXICORN_WORKERS=4`), as gunicorn reads `GUNICORN_CMD_ARGS`.
    pub fn env(&self) -> String {
        format!("OXICORN_{}", self.key.to_ascii_uppercase())
    }

    /// Parses one value as typed by a user (a flag's argument, or a file value rendered to
    /// text), and checks its range.
    ///
    /// # Errors
    /// What is wrong and what would be right, without the setting's name (callers add it).
    pub fn parse(&self, text: &str) -> Result<Value, String> {
        match self.ty {
            Type::Duration { zero, min } => {
                let d = parse_duration(text)?;
                if d.is_zero() {
                    if let Zero::Refused(why) = zero {
                        return Err(why.to_string());
                    }
                } else if d < min {
                    return Err(format!(
                        "{} is too short: use at least {}{}",
                        show_duration(Some(d)),
                        show_duration(Some(min)),
                        if zero == Zero::Off {
                            ", or 0 to turn it off"
                        } else {
                            ""
                        }
                    ));
                }
                Ok(Value::Duration(d))
            }
            Type::Count { min, max } => {
                let n: u64 = text
                    .trim()
                    .parse()
                    .map_err(|_| format!("`{text}` is not a whole number"))?;
                if n < min || n > max {
                    return Err(format!("{n} is out of range ({min} to {max})"));
                }
                Ok(Value::Count(n))
            }
            // Any case: `TRUE` and `Yes` are how some write an environment variable.
            Type::Flag => match text.trim().to_ascii_lowercase().as_str() {
                "true" | "on" | "yes" | "1" => Ok(Value::Flag(true)),
                "false" | "off" | "no" | "0" => Ok(Value::Flag(false)),
                _ => Err(format!("`{text}` is not true or false")),
            },
            Type::Path => {
                if text.is_empty() {
                    return Err("an empty path".into());
                }
                Ok(Value::Path(PathBuf::from(text)))
            }
            Type::Text { max, syntax } => {
                if text.len() > max {
                    return Err(format!("{} bytes is too long (at most {max})", text.len()));
                }
                match syntax {
                    Syntax::Free => {}
                    Syntax::LogFormat => {
                        LogFormat::parse(text).map_err(|e| e.to_string())?;
                    }
                    Syntax::AllowIps => {
                        text.parse::<ForwardedAllowIps>()
                            .map_err(|e| e.to_string())?;
                    }
                    Syntax::Name => {
                        if let Some(c) = text.chars().find(|&c| crate::log::must_escape(c)) {
                            return Err(format!(
                                "{:?} holds {}, a control or bidirectional character: a name \
                                 shown in `ps` must be printable",
                                text,
                                c.escape_unicode()
                            ));
                        }
                    }
                }
                Ok(Value::Text(text.to_string()))
            }
            Type::Binds => text
                .parse::<BindAddr>()
                .map(|a| Value::Binds(vec![a]))
                .map_err(|e| e.to_string()),
            Type::Level => text.parse().map(Value::Level),
        }
    }

    /// The default for a service of `kind` (`None` for a server setting's kind), as a value.
    pub fn default_value(&self, kind: Option<Kind>) -> Option<Value> {
        match self.default {
            Default::None => None,
            Default::Text(t) => Some(self.parse(t).expect("defaults in the table parse")),
            Default::Cpus => Some(Value::Count(default_workers())),
            Default::PerKind(pairs) => {
                let kind = kind?;
                let (_, t) = pairs.iter().find(|(k, _)| *k == kind)?;
                Some(self.parse(t).expect("defaults in the table parse"))
            }
        }
    }

    /// The default as `--help` shows it (`[default: 30]`), or nothing.
    pub fn default_help(&self) -> String {
        match self.default {
            Default::None | Default::Text("false") => String::new(),
            Default::Text(t) => format!(" [default: {t}]"),
            Default::Cpus => " [default: the number of CPUs]".into(),
            Default::PerKind(pairs) => {
                let each: Vec<String> = pairs
                    .iter()
                    .map(|(k, t)| format!("{t} for {}", k.name()))
                    .collect();
                format!(" [default: {}]", each.join(", "))
            }
        }
    }
}

/// One worker per CPU, as nginx's `worker_processes auto`.
fn default_workers() -> u64 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u64)
}

impl fmt::Display for Value {
    /// As `--check-config` shows it: durations in operator units, zero-off as `off`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Duration(d) if d.is_zero() => f.write_str("0s"),
            Value::Duration(d) => f.write_str(&show_duration(Some(*d))),
            Value::Count(n) => write!(f, "{n}"),
            Value::Flag(b) => write!(f, "{b}"),
            Value::Path(p) => write!(f, "{}", p.display()),
            Value::Text(t) => write!(f, "{t:?}"),
            Value::Binds(list) => {
                let all: Vec<String> = list.iter().map(ToString::to_string).collect();
                f.write_str(&all.join(", "))
            }
            Value::Level(l) => write!(f, "{l}"),
        }
    }
}

impl Value {
    /// The value as TOML (`--print-config`, whose output is a valid config file).
    pub fn to_toml(&self) -> toml::Value {
        match self {
            Value::Duration(d) if d.subsec_nanos() == 0 => toml::Value::Integer(d.as_secs() as i64),
            Value::Duration(d) => toml::Value::Float(d.as_secs_f64()),
            Value::Count(n) => toml::Value::Integer(*n as i64),
            Value::Flag(b) => toml::Value::Boolean(*b),
            Value::Path(p) => toml::Value::String(p.display().to_string()),
            Value::Text(t) => toml::Value::String(t.clone()),
            Value::Binds(list) => {
                toml::Value::Array(list.iter().map(|a| a.to_string().into()).collect())
            }
            Value::Level(l) => toml::Value::String(l.to_string()),
        }
    }
}

/// The known name closest to `word` (for "did you mean"), if one is close enough to be a typo.
pub fn suggest<'a>(word: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    known
        .into_iter()
        .map(|k| (edit_distance(word, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_parses_and_keys_are_unique() {
        for (i, s) in SETTINGS.iter().enumerate() {
            assert!(
                !SETTINGS[..i].iter().any(|o| o.key == s.key),
                "{} twice",
                s.key
            );
            for kind in Kind::ALL {
                if s.scope.has(kind) || s.scope == Scope::Server {
                    let _ = s.default_value(Some(kind));
                }
            }
            if let Default::PerKind(pairs) = s.default {
                for kind in Kind::ALL.into_iter().filter(|k| s.scope.has(*k)) {
                    assert!(
                        pairs.iter().any(|(k, _)| *k == kind),
                        "{} has no default for {kind:?}",
                        s.key
                    );
                }
            }
        }
    }

    #[test]
    fn constants_elsewhere_agree_with_the_table() {
        assert_eq!(
            setting("max_line").default_value(Some(Kind::Chat)),
            Some(Value::Count(super::super::DEFAULT_MAX_LINE as u64))
        );
        assert_eq!(
            setting("bind").default_value(Some(Kind::Echo)),
            Some(Value::Binds(vec![
                super::super::DEFAULT_BIND.parse().unwrap()
            ]))
        );
    }

    #[test]
    fn ranges_are_checked_by_the_table() {
        assert!(setting("workers").parse("0").is_err());
        assert!(setting("workers").parse("513").is_err());
        assert_eq!(setting("workers").parse("2"), Ok(Value::Count(2)));
        assert!(setting("timeout").parse("0.5").is_err());
        assert_eq!(
            setting("timeout").parse("0"),
            Ok(Value::Duration(Duration::ZERO))
        );
        assert!(setting("header_timeout").parse("0").is_err());
        assert!(setting("max_line").parse("0").is_err());
        assert!(setting("max_line").parse("99999999").is_err());
        assert!(setting("log_level").parse("loud").is_err());
    }

    #[test]
    fn typos_get_a_suggestion() {
        let keys = SETTINGS.iter().map(|s| s.key);
        assert_eq!(suggest("worker", keys.clone()), Some("workers"));
        assert_eq!(suggest("keepalive", keys.clone()), Some("keep_alive"));
        assert_eq!(suggest("zzzzzzzz", keys), None);
    }
}
