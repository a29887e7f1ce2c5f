//! Merging flags over the file over defaults, and refusing what cannot work.

use std::path::PathBuf;
use std::time::Duration;

use super::{
    Cli, Command, Config, DEFAULT_BIND, DEFAULT_MAX_LINE, DEFAULT_QUOTE, FileConfig, LogLevel,
    MAX_MAX_LINE, MAX_WORKERS, ServiceConfig, show_duration,
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
            None => return Err(ConfigError::NoService),
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
            max_line: match &self.service {
                ServiceConfig::Chat { max_line } | ServiceConfig::Quote { max_line, .. } => {
                    Some(*max_line)
                }
                _ => None,
            },
            quote: match &self.service {
                ServiceConfig::Quote { quote, .. } => Some(quote.clone()),
                _ => None,
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
        match &self.service {
            ServiceConfig::Chat { max_line } => rows.push(("max_line", max_line.to_string())),
            ServiceConfig::Quote { quote, max_line } => {
                rows.push(("max_line", max_line.to_string()));
                rows.push(("quote", format!("{quote:?}")));
            }
            _ => {}
        }
        rows.iter()
            .map(|(k, v)| format!("  {k:<20} {v}\n"))
            .collect()
    }
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
