//! Merging flags over the file over defaults, and refusing what cannot work.

use std::path::PathBuf;
use std::time::Duration;

use super::{
    Cli, Command, Config, DEFAULT_BIND, DEFAULT_MAX_LINE, DEFAULT_QUOTE, FileConfig, LogLevel,
    MAX_MAX_LINE, MAX_WORKERS, ServiceConfig, StaticArgs, StaticConfig, show_duration,
};
use crate::net::BindAddr;

/// Why a configuration was refused. Each names the file or the setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML for us.
    #[error("invalid config file {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// TOML's message, with line and column.
        message: String,
    },
    /// A setting has a value we cannot run with.
    #[error("invalid {key}: {message}")]
    Invalid {
        /// The setting, as spelled on the command line.
        key: &'static str,
        /// What is wrong and what would be right.
        message: String,
    },
    /// No service named and none is the default yet.
    #[error("no service given: try `oxicorn echo` (see `oxicorn --help`)")]
    NoService,
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

impl Config {
    /// Builds the configuration from the parsed flags, reading the config file they name.
    /// Called at start and again on every HUP, so an edited file takes effect on reload.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first problem found; nothing is changed by a failed load.
    pub fn load(cli: &Cli) -> Result<Config, ConfigError> {
        let file = match &cli.server.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        Config::merge(cli, file)
    }

    /// Flags over file over defaults, then the checks.
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn merge(cli: &Cli, file: FileConfig) -> Result<Config, ConfigError> {
        let args = &cli.server;
        let max_line = |flag: Option<usize>| -> Result<usize, ConfigError> {
            let n = flag.or(file.max_line).unwrap_or(DEFAULT_MAX_LINE);
            if n == 0 || n > MAX_MAX_LINE {
                return Err(invalid(
                    "max-line",
                    format!("{n} is out of range (1 to {MAX_MAX_LINE})"),
                ));
            }
            Ok(n)
        };
        let service = match &cli.command {
            Some(Command::Echo) => ServiceConfig::Echo,
            Some(Command::Static(args)) => ServiceConfig::Static(static_config(args, &file)?),
            // No service named: serve the current directory, as `python3 -m http.server`.
            None => ServiceConfig::Static(static_config(&StaticArgs::default(), &file)?),
            Some(Command::Chat(args)) => ServiceConfig::Chat {
                max_line: max_line(args.max_line)?,
            },
            Some(Command::Quote(args)) => {
                let quote = args
                    .quote
                    .clone()
                    .or_else(|| file.quote.clone())
                    .unwrap_or_else(|| DEFAULT_QUOTE.to_string());
                if quote.len() > MAX_MAX_LINE {
                    return Err(invalid(
                        "quote",
                        format!("{} bytes is too long (at most {MAX_MAX_LINE})", quote.len()),
                    ));
                }
                ServiceConfig::Quote {
                    quote,
                    max_line: max_line(args.max_line)?,
                }
            }
            Some(Command::Connect(_)) => {
                return Err(invalid(
                    "service",
                    "`connect` is a client, not a service: it has no configuration",
                ));
            }
        };

        // The file's binds are checked even when flags override them: a broken file is
        // broken, and would bite on the next start without the flags.
        let file_binds = match &file.bind {
            Some(list) => Some(
                list.iter()
                    .map(|s| {
                        s.parse::<BindAddr>()
                            .map_err(|e| invalid("bind", e.to_string()))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            None => None,
        };
        let binds = if !args.bind.is_empty() {
            args.bind.clone()
        } else if let Some(list) = file_binds {
            list
        } else {
            vec![DEFAULT_BIND.parse().expect("the default bind parses")]
        };
        if binds.is_empty() {
            return Err(invalid(
                "bind",
                "the list is empty: give at least one address",
            ));
        }
        for (i, a) in binds.iter().enumerate() {
            if binds[..i].contains(a) {
                return Err(invalid("bind", format!("{a} is given twice")));
            }
        }

        let workers = args
            .workers
            .or(file.workers)
            .unwrap_or_else(default_workers);
        if workers == 0 || workers > MAX_WORKERS {
            return Err(invalid(
                "workers",
                format!("{workers} is out of range (1 to {MAX_WORKERS})"),
            ));
        }

        let timeout = args
            .timeout
            .or(file.timeout)
            .unwrap_or(Duration::from_secs(30));
        if !timeout.is_zero() && timeout < Duration::from_secs(1) {
            return Err(invalid(
                "timeout",
                format!(
                    "{} is too short for a heartbeat: use at least 1s, or 0 to turn the check off",
                    show_duration(Some(timeout))
                ),
            ));
        }
        let graceful_timeout = args
            .graceful_timeout
            .or(file.graceful_timeout)
            .unwrap_or(Duration::from_secs(30));

        let worker_connections = args
            .worker_connections
            .or(file.worker_connections)
            .unwrap_or(1000);
        if worker_connections == 0 || worker_connections > 1 << 20 {
            return Err(invalid(
                "worker-connections",
                format!("{worker_connections} is out of range (1 to {})", 1 << 20),
            ));
        }
        let backlog = args.backlog.or(file.backlog).unwrap_or(2048);
        if backlog == 0 || backlog > 65535 {
            return Err(invalid(
                "backlog",
                format!("{backlog} is out of range (1 to 65535)"),
            ));
        }

        let idle_timeout = args
            .idle_timeout
            .or(file.idle_timeout)
            .unwrap_or_else(|| service.default_idle_timeout());

        let log_level = match (args.log_level, &file.log_level) {
            (Some(level), _) => level,
            (None, Some(s)) => s.parse().map_err(|e: String| invalid("log-level", e))?,
            (None, None) => LogLevel::Info,
        };
        let error_logfile = args
            .error_logfile
            .clone()
            .or(file.error_logfile)
            .filter(|p| p.as_os_str() != "-");
        let pidfile = args.pid.clone().or(file.pid);
        if let Some(p) = &pidfile
            && (p.as_os_str().is_empty() || p.is_dir())
        {
            return Err(invalid(
                "pid",
                format!("`{}` is not a file path", p.display()),
            ));
        }

        Ok(Config {
            service,
            binds,
            workers,
            timeout: (!timeout.is_zero()).then_some(timeout),
            graceful_timeout,
            worker_connections,
            backlog,
            idle_timeout: (!idle_timeout.is_zero()).then_some(idle_timeout),
            pidfile,
            log_level,
            error_logfile,
            config_file: args.config.clone(),
        })
    }

    /// The settings as a config file would hold them (`--print-config`).
    pub fn to_file_config(&self) -> FileConfig {
        FileConfig {
            bind: Some(self.binds.iter().map(ToString::to_string).collect()),
            workers: Some(self.workers),
            timeout: Some(self.timeout.unwrap_or_default()),
            graceful_timeout: Some(self.graceful_timeout),
            worker_connections: Some(self.worker_connections),
            backlog: Some(self.backlog),
            idle_timeout: Some(self.idle_timeout.unwrap_or_default()),
            pid: self.pidfile.clone(),
            log_level: Some(self.log_level.to_string()),
            error_logfile: self.error_logfile.clone(),
            ..self.service_file_config()
        }
    }

    /// The service's own keys for [`Config::to_file_config`].
    fn service_file_config(&self) -> FileConfig {
        match &self.service {
            ServiceConfig::Echo => FileConfig::default(),
            ServiceConfig::Static(s) => FileConfig {
                root: Some(s.root.clone()),
                keep_alive: Some(s.keep_alive),
                header_timeout: Some(s.header_timeout),
                limit_request_line: Some(s.limit_request_line),
                limit_request_fields: Some(s.limit_request_fields),
                limit_request_field_size: Some(s.limit_request_field_size),
                follow_symlinks: Some(s.follow_symlinks),
                show_hidden: Some(s.show_hidden),
                no_listing: Some(!s.listing),
                access_logfile: s.access_logfile.clone(),
                access_logformat: s.access_logformat.clone(),
                max_age: s.max_age,
                ..FileConfig::default()
            },
            ServiceConfig::Chat { max_line } => FileConfig {
                max_line: Some(*max_line),
                ..FileConfig::default()
            },
            ServiceConfig::Quote { quote, max_line } => FileConfig {
                max_line: Some(*max_line),
                quote: Some(quote.clone()),
                ..FileConfig::default()
            },
        }
    }

    /// A human summary, one setting a line (`--check-config`).
    pub fn summary(&self) -> String {
        let binds: Vec<String> = self.binds.iter().map(ToString::to_string).collect();
        let show_path = |p: &Option<PathBuf>, none: &str| {
            p.as_ref()
                .map_or(none.to_string(), |p| p.display().to_string())
        };
        let rows = [
            ("service", self.service.name().to_string()),
            ("bind", binds.join(", ")),
            ("workers", self.workers.to_string()),
            ("timeout", show_duration(self.timeout)),
            (
                "graceful_timeout",
                show_duration(Some(self.graceful_timeout)),
            ),
            ("worker_connections", self.worker_connections.to_string()),
            ("backlog", self.backlog.to_string()),
            ("idle_timeout", show_duration(self.idle_timeout)),
            ("pid", show_path(&self.pidfile, "none")),
            ("log_level", self.log_level.to_string()),
            ("error_logfile", show_path(&self.error_logfile, "stderr")),
            ("config", show_path(&self.config_file, "none")),
        ];
        let mut rows = rows.to_vec();
        if let ServiceConfig::Static(s) = &self.service {
            rows.extend([
                ("root", s.root.display().to_string()),
                ("keep_alive", show_duration(Some(s.keep_alive))),
                ("header_timeout", show_duration(Some(s.header_timeout))),
                ("limit_request_line", s.limit_request_line.to_string()),
                ("limit_request_fields", s.limit_request_fields.to_string()),
                (
                    "limit_request_field_size",
                    s.limit_request_field_size.to_string(),
                ),
                ("follow_symlinks", s.follow_symlinks.to_string()),
                ("show_hidden", s.show_hidden.to_string()),
                ("no_listing", (!s.listing).to_string()),
                ("access_logfile", show_path(&s.access_logfile, "off")),
                ("max_age", show_duration(s.max_age)),
                (
                    "access_logformat",
                    s.access_logformat
                        .as_deref()
                        .unwrap_or(crate::service::http::access_log::DEFAULT_FORMAT)
                        .to_string(),
                ),
            ]);
        }
        match &self.service {
            ServiceConfig::Chat { max_line } => rows.push(("max_line", max_line.to_string())),
            ServiceConfig::Quote { quote, max_line } => {
                rows.push(("max_line", max_line.to_string()));
                rows.push(("quote", format!("{quote:?}")));
            }
            _ => {}
        }
        rows.iter()
            .map(|(k, v)| format!("  {k:<24} {v}\n"))
            .collect()
    }
}

/// `static`'s settings: flags over file over defaults. The root must be an existing directory,
/// checked here so a typo fails before anything is bound.
fn static_config(args: &StaticArgs, file: &FileConfig) -> Result<StaticConfig, ConfigError> {
    let dir = args
        .dir
        .clone()
        .or_else(|| file.root.clone())
        .unwrap_or_else(|| PathBuf::from("."));
    let root = std::fs::canonicalize(&dir)
        .map_err(|e| invalid("root", format!("cannot serve `{}`: {e}", dir.display())))?;
    if !root.is_dir() {
        return Err(invalid(
            "root",
            format!("cannot serve `{}`: not a directory", dir.display()),
        ));
    }
    let limit = |key: &'static str, flag: Option<usize>, file: Option<usize>, default, max| {
        let v = flag.or(file).unwrap_or(default);
        if v == 0 || v > max {
            return Err(invalid(key, format!("{v} is out of range (1 to {max})")));
        }
        Ok(v)
    };
    let header_timeout = args
        .header_timeout
        .or(file.header_timeout)
        .unwrap_or(Duration::from_secs(10));
    if header_timeout.is_zero() {
        return Err(invalid(
            "header-timeout",
            "0 would let a silent client hold a connection forever: give a time such as 10",
        ));
    }
    let access_logfile = args.access_logfile.clone().or(file.access_logfile.clone());
    if let Some(p) = &access_logfile
        && p.as_os_str() != "-"
        && (p.as_os_str().is_empty() || p.is_dir())
    {
        return Err(invalid(
            "access-logfile",
            format!("`{}` is not a file path", p.display()),
        ));
    }
    let access_logformat = args
        .access_logformat
        .clone()
        .or(file.access_logformat.clone());
    if let Some(f) = &access_logformat
        && let Err(e) = crate::service::http::access_log::LogFormat::parse(f)
    {
        return Err(invalid("access-logformat", e.to_string()));
    }
    Ok(StaticConfig {
        root,
        keep_alive: args
            .keep_alive
            .or(file.keep_alive)
            .unwrap_or(Duration::from_secs(5)),
        header_timeout,
        limit_request_line: limit(
            "limit-request-line",
            args.limit_request_line,
            file.limit_request_line,
            4094,
            65536,
        )?,
        limit_request_fields: limit(
            "limit-request-fields",
            args.limit_request_fields,
            file.limit_request_fields,
            100,
            32768,
        )?,
        limit_request_field_size: limit(
            "limit-request-field-size",
            args.limit_request_field_size,
            file.limit_request_field_size,
            8190,
            65536,
        )?,
        follow_symlinks: args.follow_symlinks || file.follow_symlinks.unwrap_or(false),
        show_hidden: args.show_hidden || file.show_hidden.unwrap_or(false),
        listing: !(args.no_listing || file.no_listing.unwrap_or(false)),
        access_logfile,
        access_logformat,
        max_age: args.max_age.or(file.max_age),
    })
}

/// One worker per CPU, as nginx's `worker_processes auto`.
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("oxicorn").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn flags_win_over_the_file_which_wins_over_defaults() {
        let file: FileConfig = toml::from_str("workers = 3\nbacklog = 10\ntimeout = 5").unwrap();
        let c = Config::merge(&cli(&["echo", "-w", "2"]), file).unwrap();
        assert_eq!(c.workers, 2);
        assert_eq!(c.backlog, 10);
        assert_eq!(c.timeout, Some(Duration::from_secs(5)));
        assert_eq!(c.graceful_timeout, Duration::from_secs(30));
        assert_eq!(c.idle_timeout, Some(Duration::from_secs(300)));
        assert_eq!(c.binds, vec![DEFAULT_BIND.parse().unwrap()]);
    }

    #[test]
    fn zero_turns_timeouts_off() {
        let c = Config::merge(
            &cli(&["echo", "-t", "0", "--idle-timeout", "0"]),
            FileConfig::default(),
        )
        .unwrap();
        assert_eq!(c.timeout, None);
        assert_eq!(c.idle_timeout, None);
    }

    #[test]
    fn out_of_range_values_are_refused_by_name() {
        for (args, key) in [
            (&["echo", "-w", "0"][..], "workers"),
            (
                &["echo", "--worker-connections", "0"][..],
                "worker-connections",
            ),
            (&["echo", "--backlog", "0"][..], "backlog"),
            (&["echo", "-t", "0.5"][..], "timeout"),
            (
                &["echo", "-b", "127.0.0.1:1", "-b", "127.0.0.1:1"][..],
                "bind",
            ),
        ] {
            match Config::merge(&cli(args), FileConfig::default()) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{args:?}"),
                other => panic!("{args:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn no_service_means_static_of_the_current_directory() {
        let c = Config::merge(&cli(&[]), FileConfig::default()).unwrap();
        let ServiceConfig::Static(s) = &c.service else {
            panic!("{c:?}");
        };
        assert_eq!(
            s.root,
            std::env::current_dir().unwrap().canonicalize().unwrap()
        );
        assert_eq!(s.keep_alive, Duration::from_secs(5));
        assert_eq!(s.limit_request_line, 4094);
        assert!(s.listing && !s.show_hidden && !s.follow_symlinks);
        assert_eq!(c.binds, vec![DEFAULT_BIND.parse().unwrap()]);
    }

    #[test]
    fn static_root_must_be_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        for bad in [file, dir.path().join("missing")] {
            let args = ["static", bad.to_str().unwrap()];
            match Config::merge(&cli(&args), FileConfig::default()) {
                Err(ConfigError::Invalid { key: "root", .. }) => {}
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let bad = Config::merge(
            &cli(&["static", "--limit-request-line", "0"]),
            FileConfig::default(),
        );
        assert!(matches!(
            bad,
            Err(ConfigError::Invalid {
                key: "limit-request-line",
                ..
            })
        ));
    }

    #[test]
    fn static_print_config_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::merge(
            &cli(&[
                "static",
                dir.path().to_str().unwrap(),
                "--no-listing",
                "--keep-alive",
                "0",
                "--access-logfile",
                "-",
            ]),
            FileConfig::default(),
        )
        .unwrap();
        let text = toml::to_string(&c.to_file_config()).unwrap();
        let back = Config::merge(&cli(&["static"]), toml::from_str(&text).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn print_config_round_trips() {
        let c = Config::merge(
            &cli(&["echo", "-b", "unix:/tmp/x", "-w", "2"]),
            FileConfig::default(),
        )
        .unwrap();
        let text = toml::to_string(&c.to_file_config()).unwrap();
        let back = Config::merge(&cli(&["echo"]), toml::from_str(&text).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn chat_and_quote_options_from_flags_or_file() {
        let c = Config::merge(&cli(&["chat"]), FileConfig::default()).unwrap();
        assert_eq!(c.service, ServiceConfig::Chat { max_line: 4096 });
        assert_eq!(c.idle_timeout, None);
        let file: FileConfig = toml::from_str("max_line = 10\nquote = \"q\"").unwrap();
        let c = Config::merge(&cli(&["quote"]), file.clone()).unwrap();
        assert_eq!(
            c.service,
            ServiceConfig::Quote {
                quote: "q".into(),
                max_line: 10
            }
        );
        let c = Config::merge(&cli(&["chat", "--max-line", "20"]), file).unwrap();
        assert_eq!(c.service, ServiceConfig::Chat { max_line: 20 });
        let text = toml::to_string(&c.to_file_config()).unwrap();
        let back = Config::merge(&cli(&["chat"]), toml::from_str(&text).unwrap()).unwrap();
        assert_eq!(back, c);
        for bad in [
            &["chat", "--max-line", "0"][..],
            &["quote", "--max-line", "99999999"],
        ] {
            match Config::merge(&cli(bad), FileConfig::default()) {
                Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "max-line"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }
}
