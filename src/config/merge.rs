//! The merge: flags over the file over the table's defaults, then the checks no single value
//! can make alone (a root that must be a directory, a bind given twice, a pid path that looks
//! like a port), into one [`Config`].

use std::path::{Path, PathBuf};

use super::file::{FileConfig, Layer, render};
use super::settings::{Kind, SETTINGS, Scope, Value, setting};
use super::{
    AppConfig, Config, LogLevel, RunAs, ServeArgs, ServiceConfig, ServiceSpec, StaticConfig,
};
use crate::net::BindAddr;
use crate::service::http::app::HttpSettings;
use crate::service::http::app::forwarded::AllowIpsError;

/// Why a configuration was refused. Each names the file or the setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    // The OS error is in the message and not a `#[source]`: `main` prints the whole chain,
    // and a log line prints only the message; either way the cause appears once.
    #[error("cannot read config file {}: {cause}", shown(path))]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        cause: std::io::Error,
    },
    /// The config file has problems: every one, each with its line.
    #[error("invalid config file {}: {}", path.display(), problems.join("; "))]
    File {
        /// The file.
        path: PathBuf,
        /// One line each (`line 3: unknown key ...`).
        problems: Vec<String>,
    },
    /// A setting has a value we cannot run with.
    #[error("invalid {key}: {message}")]
    Invalid {
        /// The setting, as spelled on the command line (`max-line`).
        key: String,
        /// What is wrong and what would be right.
        message: String,
    },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.replace('_', "-"),
        message: message.into(),
    }
}

impl Config {
    /// Builds the configuration from the command line, reading the config file it names.
    /// Called at start and again on every HUP, so an edited file takes effect on reload.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first problem found (every problem, for the file); nothing
    /// is changed by a failed load.
    pub fn load(args: &ServeArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        Config::merge(args, &file)
    }

    /// Flags over file over defaults, then the checks.
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn merge(args: &ServeArgs, file: &FileConfig) -> Result<Config, ConfigError> {
        let flags = flag_layer(args)?;
        let server = |key: &'static str| pick(key, &[&flags, &file.top], None);

        let mut specs = Vec::new();
        if file.services.is_empty() {
            let kind = args.kind.unwrap_or(if args.embeds_app {
                Kind::App
            } else {
                Kind::Static
            });
            for key in file.top.0.keys() {
                let s = setting(key);
                if s.scope != Scope::Server && !s.scope.has(kind) {
                    return Err(invalid(
                        key,
                        format!(
                            "`{key}` in {} is not a setting of the {} service",
                            show(&args.config),
                            kind.name()
                        ),
                    ));
                }
            }
            specs.push(spec(kind.name().to_string(), kind, &[&flags, &file.top])?);
        } else {
            if let Some(kind) = args.kind {
                return Err(invalid(
                    "service",
                    format!(
                        "{} declares [[service]] tables, so name no service on the command \
                         line (drop `{}`)",
                        show(&args.config),
                        kind.name()
                    ),
                ));
            }
            if let Some((key, _)) = args
                .flags
                .iter()
                .find(|(k, _)| setting(k).scope != Scope::Server)
            {
                // Named as the user gave it: a variable set in the environment is not a flag
                // they can find on their command line.
                let given = if args.from_env.contains(key) {
                    setting(key).env()
                } else {
                    format!("--{}", key.replace('_', "-"))
                };
                return Err(invalid(
                    key,
                    format!(
                        "{} declares [[service]] tables: set {key} in the table it applies to, \
                         not {given} (server options such as --workers still work on the \
                         command line)",
                        show(&args.config),
                    ),
                ));
            }
            for fs in &file.services {
                if fs.kind == Kind::App && !args.embeds_app {
                    return Err(prefix_service(
                        invalid(
                            "kind",
                            "`kind = \"app\"` needs a program that embeds oxicorn to serve \
                             its own app (oxicorn::Server::app); this command serves only the \
                             built-in services",
                        ),
                        &fs.name,
                        fs.line,
                    ));
                }
                let spec = spec(fs.name.clone(), fs.kind, &[&fs.settings])
                    .map_err(|e| prefix_service(e, &fs.name, fs.line))?;
                if specs.iter().any(|s: &ServiceSpec| s.name == spec.name) {
                    return Err(invalid(
                        "name",
                        format!(
                            "two services are called `{}`: give each a `name`",
                            spec.name
                        ),
                    ));
                }
                specs.push(spec);
            }
        }
        let mut seen: Vec<&BindAddr> = Vec::new();
        for spec in &specs {
            for a in &spec.binds {
                if seen.contains(&a) {
                    return Err(invalid("bind", format!("{a} is given twice")));
                }
                seen.push(a);
            }
        }

        let count = |key| match server(key) {
            Some(Value::Count(n)) => n,
            other => unreachable!("{key} is a count: {other:?}"),
        };
        let duration = |key| match server(key) {
            Some(Value::Duration(d)) => d,
            other => unreachable!("{key} is a duration: {other:?}"),
        };
        let path = |key| match server(key) {
            Some(Value::Path(p)) => Some(p),
            _ => None,
        };
        let log_level = match server("log_level") {
            Some(Value::Level(l)) => l,
            _ => LogLevel::Info,
        };
        let pidfile = path("pid");
        if let Some(p) = &pidfile {
            check_pid_path(p)?;
        }
        let error_logfile = path("error_logfile").filter(|p| p.as_os_str() != "-");
        let text = |key| match server(key) {
            Some(Value::Text(t)) => Some(t),
            _ => None,
        };
        let run_as = run_as(text("user"), text("group"))?;
        // Empty is unset: a title of ": arbiter" names nobody.
        let proc_name = text("proc_name").filter(|n| !n.trim().is_empty());
        let umask = match text("umask") {
            Some(m) => Some(
                u32::from_str_radix(m.trim_start_matches("0o"), 8)
                    .ok()
                    .filter(|m| *m <= 0o777)
                    .ok_or_else(|| {
                        invalid("umask", format!("`{m}` is not an octal mode such as 022"))
                    })?,
            ),
            None => None,
        };
        let timeout = duration("timeout");
        let values = SETTINGS
            .iter()
            .filter(|s| s.scope == Scope::Server)
            .filter_map(|s| server(s.key).map(|v| (s.key, v)))
            .collect();
        Ok(Config {
            services: specs,
            workers: count("workers") as usize,
            timeout: (!timeout.is_zero()).then_some(timeout),
            graceful_timeout: duration("graceful_timeout"),
            worker_connections: count("worker_connections") as usize,
            backlog: count("backlog") as u32,
            max_surge: match server("max_surge") {
                Some(Value::Count(n)) => n as usize,
                _ => super::default_max_surge(count("workers") as usize),
            },
            boot_timeout: duration("boot_timeout"),
            max_requests: Some(count("max_requests")).filter(|&n| n > 0),
            max_requests_jitter: count("max_requests_jitter"),
            max_worker_memory: Some(count("max_worker_memory")).filter(|&n| n > 0),
            pidfile,
            proc_name,
            log_level,
            error_logfile,
            config_file: args.config.clone(),
            run_as,
            umask,
            allow_root: matches!(server("allow_root"), Some(Value::Flag(true))),
            service_tables: !file.services.is_empty(),
            values,
        })
    }

    /// The configuration as a config file (`--print-config`): the same shape it came from,
    /// one service at the top level or `[[service]]` tables. It parses back to this config.
    pub fn to_toml(&self) -> String {
        if self.service_tables {
            let services: Vec<_> = self
                .services
                .iter()
                .map(|s| (s.name.clone(), s.service.kind(), s.values.clone()))
                .collect();
            render(&self.values, &services)
        } else {
            let mut top = self.values.clone();
            top.extend(self.services.iter().flat_map(|s| s.values.iter().cloned()));
            render(&top, &[])
        }
    }

    /// A human summary, one setting a line (`--check-config`): the server's settings, then
    /// each service's.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let mut row = |k: &str, v: String| out.push_str(&format!("  {k:<24} {v}\n"));
        for (k, v) in &self.values {
            // A blank `proc_name` is unset (see `Config::proc_name`): shown as when not given.
            if *k == "proc_name" && matches!(v, Value::Text(t) if t.trim().is_empty()) {
                continue;
            }
            row(k, show_value(k, v));
        }
        row(
            "config",
            self.config_file
                .as_ref()
                .map_or("none".into(), |p| p.display().to_string()),
        );
        for s in &self.services {
            let name = if s.name == s.service.name() {
                s.name.clone()
            } else {
                format!("{} ({})", s.service.name(), s.name)
            };
            row("service", name);
            for (k, v) in &s.values {
                row(k, show_value(k, v));
            }
        }
        out
    }
}

/// A value as `--check-config` shows it: zero-off durations as `off`, paths `-` as stdout.
fn show_value(key: &str, v: &Value) -> String {
    match (setting(key).ty, v) {
        (super::settings::Type::Duration { zero, .. }, Value::Duration(d))
            if d.is_zero() && zero == super::settings::Zero::Off =>
        {
            "off".into()
        }
        _ => v.to_string(),
    }
}

/// The flags as a layer, each value checked by the table (a bad one is a configuration error
/// naming the flag, as a bad file value names the key, and the `OXICORN_*` variable with its
/// value when the value came from the environment).
fn flag_layer(args: &ServeArgs) -> Result<Layer, ConfigError> {
    if let Some(port) = &args.bad_port {
        return Err(invalid(
            "port",
            format!("`{port}` is not a port number (0 to 65535)"),
        ));
    }
    let mut layer = Layer::default();
    for (key, text) in &args.flags {
        let s = setting(key);
        let v = s.parse(text).map_err(|e| {
            if args.from_env.contains(key) {
                invalid(key, format!("{e} (from {}={text:?})", s.env()))
            } else {
                invalid(key, e)
            }
        })?;
        match (layer.0.get_mut(s.key), v) {
            (Some(Value::Binds(all)), Value::Binds(mut more)) => all.append(&mut more),
            (_, v) => layer.set(s.key, v),
        }
    }
    Ok(layer)
}

/// The first layer's value for `key`, or the table's default for `kind`.
fn pick(key: &'static str, layers: &[&Layer], kind: Option<Kind>) -> Option<Value> {
    layers
        .iter()
        .find_map(|l| l.get(key).cloned())
        .or_else(|| setting(key).default_value(kind))
}

/// One service from its layers (first wins).
fn spec(name: String, kind: Kind, layers: &[&Layer]) -> Result<ServiceSpec, ConfigError> {
    let values: Vec<(&'static str, Value)> = SETTINGS
        .iter()
        .filter(|s| s.scope.has(kind))
        .filter_map(|s| pick(s.key, layers, Some(kind)).map(|v| (s.key, v)))
        .collect();
    let get = |key: &str| values.iter().find(|(k, _)| *k == key).map(|(_, v)| v);
    let count = |key: &str| match get(key) {
        Some(Value::Count(n)) => *n as usize,
        other => unreachable!("{key} is a count: {other:?}"),
    };
    let duration = |key: &str| match get(key) {
        Some(Value::Duration(d)) => *d,
        other => unreachable!("{key} is a duration: {other:?}"),
    };
    let flag = |key: &str| matches!(get(key), Some(Value::Flag(true)));
    let binds = match get("bind") {
        Some(Value::Binds(list)) if !list.is_empty() => list.clone(),
        _ => {
            return Err(invalid(
                "bind",
                "the list is empty: give at least one address",
            ));
        }
    };
    for (i, a) in binds.iter().enumerate() {
        if binds[..i].contains(a) {
            return Err(invalid("bind", format!("{a} is given twice")));
        }
    }
    // The access log, shared by the HTTP services.
    let access_log = || -> Result<(Option<PathBuf>, Option<String>), ConfigError> {
        let access_logfile = match get("access_logfile") {
            Some(Value::Path(p)) => Some(p.clone()),
            _ => None,
        };
        let access_logformat = match get("access_logformat") {
            Some(Value::Text(f)) => Some(f.clone()),
            _ => None,
        };
        if let Some(f) = &access_logformat
            && let Err(e) = crate::service::http::access_log::LogFormat::parse(f)
        {
            return Err(invalid("access_logformat", e.to_string()));
        }
        if let Some(p) = &access_logfile
            && p.as_os_str() != "-"
            && p.is_dir()
        {
            return Err(invalid(
                "access_logfile",
                format!("`{}` is a directory, not a file path", p.display()),
            ));
        }
        Ok((access_logfile, access_logformat))
    };
    let service = match kind {
        Kind::App => {
            let (access_logfile, access_logformat) = access_log()?;
            let forwarded_allow_ips = match get("forwarded_allow_ips") {
                Some(Value::Text(t)) => t
                    .parse()
                    .map_err(|e: AllowIpsError| invalid("forwarded_allow_ips", e.to_string()))?,
                _ => unreachable!("forwarded_allow_ips has a default"),
            };
            let request_timeout = duration("request_timeout");
            let client_body_timeout = duration("client_body_timeout");
            ServiceConfig::App(AppConfig {
                http: HttpSettings {
                    keep_alive: duration("keep_alive"),
                    header_timeout: duration("header_timeout"),
                    limit_request_line: count("limit_request_line"),
                    limit_request_fields: count("limit_request_fields"),
                    limit_request_field_size: count("limit_request_field_size"),
                    limit_request_body: match get("limit_request_body") {
                        Some(Value::Count(n)) => *n,
                        _ => unreachable!("limit_request_body has a default"),
                    },
                    request_timeout: (!request_timeout.is_zero()).then_some(request_timeout),
                    client_body_timeout: (!client_body_timeout.is_zero())
                        .then_some(client_body_timeout),
                    forwarded_allow_ips,
                },
                access_logfile,
                access_logformat,
            })
        }
        Kind::Echo => ServiceConfig::Echo,
        Kind::Chat => ServiceConfig::Chat {
            max_line: count("max_line"),
        },
        Kind::Quote => ServiceConfig::Quote {
            quote: match get("quote") {
                Some(Value::Text(t)) => t.clone(),
                _ => unreachable!("quote has a default"),
            },
            max_line: count("max_line"),
        },
        Kind::Static => {
            let dir = match get("root") {
                Some(Value::Path(p)) => p.clone(),
                _ => PathBuf::from("."),
            };
            let root = std::fs::canonicalize(&dir)
                .map_err(|e| invalid("root", format!("cannot serve `{}`: {e}", dir.display())))?;
            if !root.is_dir() {
                return Err(invalid(
                    "root",
                    format!("cannot serve `{}`: not a directory", dir.display()),
                ));
            }
            let (access_logfile, access_logformat) = access_log()?;
            ServiceConfig::Static(StaticConfig {
                root,
                keep_alive: duration("keep_alive"),
                header_timeout: duration("header_timeout"),
                limit_request_line: count("limit_request_line"),
                limit_request_fields: count("limit_request_fields"),
                limit_request_field_size: count("limit_request_field_size"),
                follow_symlinks: flag("follow_symlinks"),
                show_hidden: flag("show_hidden"),
                listing: !flag("no_listing"),
                access_logfile,
                access_logformat,
                max_age: match get("max_age") {
                    Some(Value::Duration(d)) => Some(*d),
                    _ => None,
                },
                open_file_cache_valid: duration("open_file_cache_valid"),
            })
        }
    };
    let idle = duration("idle_timeout");
    // What --print-config writes back: the canonical root, so the file works from anywhere.
    let values = values
        .iter()
        .map(|(k, v)| match (&service, *k) {
            (ServiceConfig::Static(s), "root") => (*k, Value::Path(s.root.clone())),
            _ => (*k, v.clone()),
        })
        .collect();
    Ok(ServiceSpec {
        name,
        service,
        binds,
        idle_timeout: (!idle.is_zero()).then_some(idle),
        values,
    })
}

/// `--user` and `--group`, by name or number, looked up in this machine's user database.
fn run_as(user: Option<String>, group: Option<String>) -> Result<Option<RunAs>, ConfigError> {
    use nix::unistd::{Gid, Group, Uid, User};
    let user = match user {
        None => None,
        Some(u) => {
            let found = match u.parse::<u32>() {
                Ok(id) => User::from_uid(Uid::from_raw(id)),
                Err(_) => User::from_name(&u),
            };
            match found {
                Ok(Some(found)) => Some(found),
                Ok(None) => return Err(invalid("user", format!("no user `{u}` on this machine"))),
                Err(e) => return Err(invalid("user", format!("cannot look up `{u}`: {e}"))),
            }
        }
    };
    let gid = match group {
        None => None,
        Some(g) => {
            let found = match g.parse::<u32>() {
                Ok(id) => Group::from_gid(Gid::from_raw(id)),
                Err(_) => Group::from_name(&g),
            };
            match found {
                Ok(Some(found)) => Some(found.gid.as_raw()),
                Ok(None) => {
                    return Err(invalid("group", format!("no group `{g}` on this machine")));
                }
                Err(e) => return Err(invalid("group", format!("cannot look up `{g}`: {e}"))),
            }
        }
    };
    Ok(match (user, gid) {
        (None, None) => None,
        (Some(u), gid) => Some(RunAs {
            gid: gid.unwrap_or(u.gid.as_raw()),
            user: Some((u.uid.as_raw(), u.name)),
        }),
        (None, Some(gid)) => Some(RunAs { user: None, gid }),
    })
}

/// Says which `[[service]]` an error is about.
fn prefix_service(err: ConfigError, name: &str, line: usize) -> ConfigError {
    match err {
        ConfigError::Invalid { key, message } => ConfigError::Invalid {
            key,
            message: format!("{message} (in the [[service]] `{name}` at line {line})"),
        },
        other => other,
    }
}

/// A pid file path must be a file path; a path of digits alone is a port typed after `-p`
/// (gunicorn's `--pid`, which users of other servers read as `--port`).
fn check_pid_path(p: &Path) -> Result<(), ConfigError> {
    let text = p.to_string_lossy();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(
            "pid",
            format!(
                "`{text}` looks like a port, not a pid file (-p is --pid, as in gunicorn): \
                 did you mean --bind 127.0.0.1:{text} (or --port {text})?"
            ),
        ));
    }
    if text.is_empty() || p.is_dir() {
        return Err(invalid(
            "pid",
            format!("`{}` is not a file path", p.display()),
        ));
    }
    Ok(())
}

/// A config file's path in a message: `''` for an empty one, which would otherwise leave a
/// gap (`config file : ...`).
fn shown(path: &std::path::Path) -> String {
    if path.as_os_str().is_empty() {
        "''".into()
    } else {
        path.display().to_string()
    }
}

fn show(config: &Option<PathBuf>) -> String {
    config
        .as_ref()
        .map_or("the config file".into(), |p| p.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::super::cli::{Invocation, parse_from};
    use super::super::{DEFAULT_BIND, ServeArgs};
    use super::*;
    use std::time::Duration;

    fn cli(args: &[&str]) -> ServeArgs {
        match parse_from(std::iter::once("oxicorn").chain(args.iter().copied())).unwrap() {
            Invocation::Serve(a) => a,
            other => panic!("{other:?}"),
        }
    }

    fn file(text: &str) -> FileConfig {
        FileConfig::parse(text).unwrap()
    }

    fn one(c: &Config) -> &ServiceSpec {
        assert_eq!(c.services.len(), 1);
        &c.services[0]
    }

    #[test]
    fn flags_win_over_the_file_which_wins_over_defaults() {
        let f = file("workers = 3\nbacklog = 10\ntimeout = 5");
        let c = Config::merge(&cli(&["echo", "-w", "2"]), &f).unwrap();
        assert_eq!(c.workers, 2);
        assert_eq!(c.backlog, 10);
        assert_eq!(c.timeout, Some(Duration::from_secs(5)));
        assert_eq!(c.graceful_timeout, Duration::from_secs(30));
        assert_eq!(one(&c).idle_timeout, Some(Duration::from_secs(300)));
        assert_eq!(one(&c).binds, vec![DEFAULT_BIND.parse().unwrap()]);
    }

    #[test]
    fn zero_turns_timeouts_off() {
        let c = Config::merge(
            &cli(&["echo", "-t", "0", "--idle-timeout", "0"]),
            &FileConfig::default(),
        )
        .unwrap();
        assert_eq!(c.timeout, None);
        assert_eq!(one(&c).idle_timeout, None);
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
            (&["echo", "-t", "soon"][..], "timeout"),
            (&["echo", "-b", "nowhere"][..], "bind"),
            (&["echo", "--log-level", "loud"][..], "log-level"),
            (
                &["echo", "-b", "127.0.0.1:1", "-b", "127.0.0.1:1"][..],
                "bind",
            ),
            (&["chat", "--max-line", "0"][..], "max-line"),
            (&["quote", "--max-line", "99999999"][..], "max-line"),
            (
                &["static", "--limit-request-line", "0"][..],
                "limit-request-line",
            ),
            (&["static", "--header-timeout", "0"][..], "header-timeout"),
            (&["-p", "8080"][..], "pid"),
        ] {
            match Config::merge(&cli(args), &FileConfig::default()) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{args:?}"),
                other => panic!("{args:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_pid_path_of_digits_gets_a_hint() {
        let err = Config::merge(&cli(&["-p", "8080"]), &FileConfig::default()).unwrap_err();
        assert!(err.to_string().contains("--bind 127.0.0.1:8080"), "{err}");
    }

    #[test]
    fn no_service_means_static_of_the_current_directory() {
        let c = Config::merge(&cli(&[]), &FileConfig::default()).unwrap();
        let ServiceConfig::Static(s) = &one(&c).service else {
            panic!("{c:?}");
        };
        assert_eq!(
            s.root,
            std::env::current_dir().unwrap().canonicalize().unwrap()
        );
        assert_eq!(s.keep_alive, Duration::from_secs(5));
        assert_eq!(s.limit_request_line, 4094);
        assert!(s.listing && !s.show_hidden && !s.follow_symlinks);
        assert_eq!(one(&c).binds, vec![DEFAULT_BIND.parse().unwrap()]);
    }

    #[test]
    fn static_root_must_be_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, "x").unwrap();
        for bad in [f, dir.path().join("missing")] {
            let args = ["static", bad.to_str().unwrap()];
            match Config::merge(&cli(&args), &FileConfig::default()) {
                Err(ConfigError::Invalid { key, .. }) if key == "root" => {}
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    fn round_trip(args: &[&str]) {
        let c = Config::merge(&cli(args), &FileConfig::default()).unwrap();
        let text = c.to_toml();
        let kind = c.services[0].service.name();
        let back = Config::merge(&cli(&[kind]), &file(&text)).unwrap();
        assert_eq!(back.services, c.services, "{text}");
        assert_eq!(back.workers, c.workers);
    }

    #[test]
    fn print_config_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        round_trip(&[
            "static",
            d,
            "--no-listing",
            "--keep-alive",
            "0",
            "--access-logfile",
            "-",
        ]);
        round_trip(&["echo", "-b", "unix:/tmp/x", "-w", "2"]);
        round_trip(&["chat", "--max-line", "20"]);
        round_trip(&["quote", "--quote", "q", "--max-line", "10"]);
    }

    #[test]
    fn chat_and_quote_options_from_flags_or_file() {
        let c = Config::merge(&cli(&["chat"]), &FileConfig::default()).unwrap();
        assert_eq!(one(&c).service, ServiceConfig::Chat { max_line: 4096 });
        assert_eq!(one(&c).idle_timeout, None);
        let f = file("max_line = 10\nquote = \"q\"");
        let c = Config::merge(&cli(&["quote"]), &f).unwrap();
        assert_eq!(
            one(&c).service,
            ServiceConfig::Quote {
                quote: "q".into(),
                max_line: 10
            }
        );
        // `quote` is not a chat setting: refused, not silently ignored.
        assert!(Config::merge(&cli(&["chat"]), &f).is_err());
        let c = Config::merge(&cli(&["chat", "--max-line", "20"]), &file("max_line = 10")).unwrap();
        assert_eq!(one(&c).service, ServiceConfig::Chat { max_line: 20 });
    }

    #[test]
    fn several_services_from_tables() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "workers = 2\n[[service]]\nkind = \"static\"\nbind = \"127.0.0.1:1\"\nroot = {:?}\n\
             [[service]]\nkind = \"chat\"\nbind = [\"127.0.0.1:2\", \"unix:/tmp/c\"]\n",
            dir.path()
        );
        let c = Config::merge(&cli(&["-w", "3"]), &file(&text)).unwrap();
        assert_eq!(c.workers, 3);
        assert_eq!(c.services.len(), 2);
        assert_eq!(c.services[1].binds.len(), 2);
        assert_eq!(c.services[1].idle_timeout, None);
        assert_eq!(c.service_names(), "static, chat");
        assert!(c.needs_bus());
        let back = Config::merge(&cli(&["-w", "3"]), &file(&c.to_toml())).unwrap();
        assert_eq!(back, c);
        assert!(c.summary().contains("service                  chat"));

        // The command line may not name a service or set a service option then.
        assert!(Config::merge(&cli(&["chat"]), &file(&text)).is_err());
        assert!(Config::merge(&cli(&["-b", "127.0.0.1:3"]), &file(&text)).is_err());
        // An address in two services is refused.
        let twice = "[[service]]\nkind = \"echo\"\nbind = \"127.0.0.1:1\"\n\
                     [[service]]\nkind = \"chat\"\nbind = \"127.0.0.1:1\"\n";
        assert!(Config::merge(&cli(&[]), &file(twice)).is_err());
    }

    #[test]
    fn an_app_sits_beside_static_only_in_a_program_that_embeds_one() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "workers = 2\n[[service]]\nkind = \"app\"\nbind = \"127.0.0.1:1\"\n\
             [[service]]\nkind = \"static\"\nbind = \"127.0.0.1:2\"\nroot = {:?}\n",
            dir.path()
        );
        let embedded = ServeArgs {
            embeds_app: true,
            ..ServeArgs::default()
        };
        let c = Config::merge(&embedded, &file(&text)).unwrap();
        assert_eq!(c.service_names(), "app, static");
        // Without tables, the embedding program's service is its app.
        let c = Config::merge(&embedded, &file("workers = 2")).unwrap();
        assert_eq!(one(&c).service.kind(), Kind::App);
        // The oxicorn command has no app: refused at the check, with the table's line.
        let err = Config::merge(&cli(&[]), &file(&text))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("needs a program that embeds oxicorn") && err.contains("line 2"),
            "{err}"
        );
    }
}
