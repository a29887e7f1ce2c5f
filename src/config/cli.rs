//! The command line, built from the settings table ([`super::settings::SETTINGS`]): every
//! setting is a flag (its key with dashes, gunicorn's short letter where it has one), on the
//! service commands it belongs to, with its help and default from the table.
//!
//! Two groups of commands: services (`static`, `echo`, `chat`, `quote`: run a server) and
//! client commands (`connect`, `completions`, `man`: run once and exit), which take no server
//! option. `oxicorn` alone runs `static`, and `static`'s options and its `DIR` work without
//! the word `static` (`oxicorn ./public --keep-alive 2`).
//!
//! This module turns `argv` into an [`Invocation`]; it reads no file (the merge does).

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{Arg, ArgAction, ArgMatches, Command};

use super::parse_duration;
use super::settings::{Kind, SETTINGS, Scope, Setting, Type};

const ABOUT: &str = "A pre-fork network server: one arbiter, a pool of worker processes";

const LONG_ABOUT: &str = "\
A pre-fork network server: one small arbiter process binds the sockets and keeps a pool of \
worker processes alive; each worker serves many connections on its own event loop.

The arbiter respawns workers that die, kills workers that stop answering (--timeout), and \
reloads or scales the pool without dropping a connection (signals below).

With no command, oxicorn serves DIR (default: the current directory) over HTTP, as \
`oxicorn static DIR` does; the static options below apply.";

const AFTER_HELP: &str = "\
Each service has options of its own: see `oxicorn SERVICE --help` (static, echo, chat, quote).

Examples:
  oxicorn                          serve the current directory on http://127.0.0.1:8000
  oxicorn ./public --port 8080     serve ./public on http://127.0.0.1:8080
  oxicorn static ./public -w 4 --access-logfile -
  oxicorn echo --bind 127.0.0.1:9000 --workers 4
  oxicorn echo -b 127.0.0.1:9000 -b unix:/tmp/echo.sock --pid /tmp/oxi.pid
  oxicorn -c oxicorn.toml --check-config
  oxicorn chat -b 127.0.0.1:7000 -w 4         (then: telnet 127.0.0.1 7000)
  oxicorn connect 127.0.0.1:7000 --timeout 3

Signals to the arbiter (kill -SIG $(cat PIDFILE)):
  TERM       graceful stop: close listeners, let connections finish (--graceful-timeout)
  INT, QUIT  fast stop
  HUP        reload: re-read the config file, start new workers, then retire the old ones
  TTIN/TTOU  one worker more / one fewer
  USR1       reopen log files (workers and the bus hub too)

The config file (-c) is TOML with the flags' names, dashes as underscores:
  bind = [\"127.0.0.1:9000\", \"unix:/tmp/echo.sock\"]
  workers = 4
  graceful_timeout = 10
and may declare several services served by one pool, each in a [[service]] table:
  [[service]]
  kind = \"static\"
  bind = \"127.0.0.1:8000\"
  [[service]]
  kind = \"chat\"
  bind = \"127.0.0.1:7000\"";

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Invocation {
    /// Run a server.
    Serve(ServeArgs),
    /// `oxicorn connect ADDR`: a line client.
    Connect {
        /// Where to connect, as typed (`HOST:PORT`, `[IPV6]:PORT`, `unix:PATH`).
        addr: String,
        /// Bound on each wait for readiness.
        timeout: Duration,
    },
    /// `oxicorn completions SHELL`: print a completion script.
    Completions(clap_complete::Shell),
    /// `oxicorn man`: print the man page (roff).
    Man,
}

/// A server's command line.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServeArgs {
    /// The service named on the command line; `None` runs the file's services, or the
    /// default service (`static`, or `app` for a program that embeds one).
    pub kind: Option<Kind>,
    /// The command line is that of a program embedding its own app
    /// ([`crate::server::Server`]): its default service is `app`, and its config file may
    /// declare `kind = "app"` services beside the built-in ones. The `oxicorn` command has no
    /// app to run, so it refuses them.
    pub embeds_app: bool,
    /// Settings given as flags, by key, as typed (checked by the merge, so a bad value is a
    /// configuration error naming the flag, exactly like a bad value in the file). A
    /// repeatable flag (`--bind`) appears once per occurrence; `--port N` appears as a `bind`.
    pub flags: Vec<(&'static str, String)>,
    /// The keys in `flags` whose values came from their `OXICORN_*` environment variables
    /// rather than the command line: a bad one is reported naming the variable, which the
    /// user would otherwise look for among the flags they typed.
    pub from_env: Vec<&'static str>,
    /// The first `--port` value that is not a port number, as typed: refused by the merge as
    /// a bad value of any other option is (a configuration error, exit 1), not by clap (a
    /// usage error, exit 2), so that every option's bad value is reported alike.
    pub bad_port: Option<String>,
    /// `-c FILE`.
    pub config: Option<PathBuf>,
    /// `--check-config`.
    pub check_config: bool,
    /// `--print-config`.
    pub print_config: bool,
}

/// The `connect` timeout when not given.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The whole command line, for `--help`, completions and the man page.
pub fn command() -> Command {
    let mut root = Command::new("oxicorn")
        .version(crate::VERSION)
        .about(ABOUT)
        .long_about(LONG_ABOUT)
        .after_help(AFTER_HELP)
        .subcommand_value_name("COMMAND")
        .subcommand_help_heading("Services (run a server) and client commands");
    root = server_args(root);
    root = service_args(root, Kind::Static);
    for kind in Kind::ALL {
        let about = match kind {
            Kind::Static => {
                "Serve the files under DIR over HTTP/1.1 (the default, for the current directory)"
            }
            Kind::Echo => "Echo every byte back to its sender",
            Kind::Chat => "A line-based chat room across all workers (telnet and nc welcome)",
            Kind::Quote => {
                "Reply with the current quote, then keep what the client sent as the new one"
            }
            Kind::App => unreachable!("not in Kind::ALL"),
        };
        let sub = Command::new(kind.name()).about(about);
        root = root.subcommand(service_args(server_args(sub), kind));
    }
    root.subcommand(
        Command::new("connect")
            .about("Client: a line client (like nc, with clear errors): send stdin, print what arrives")
            .arg(
                Arg::new("addr")
                    .value_name("ADDR")
                    .required(true)
                    .help("Where to connect: HOST:PORT, [IPV6]:PORT or unix:PATH"),
            )
            .arg(
                Arg::new("timeout")
                    .short('t')
                    .long("timeout")
                    .value_name("SECS")
                    .value_parser(parse_duration)
                    .help("Bound on each wait for readiness (connecting, a server that stops reading) [default: 10]"),
            ),
    )
    .subcommand(
        Command::new("completions")
            .about("Client: print a shell completion script (bash, zsh, fish, elvish, powershell)")
            .arg(
                Arg::new("shell")
                    .value_name("SHELL")
                    .required(true)
                    .value_parser(clap::value_parser!(clap_complete::Shell)),
            ),
    )
    .subcommand(Command::new("man").about("Client: print the man page (roff; pipe into `man -l -`)"))
}

/// Adds the server settings, `-c`, `--check-config` and `--print-config`.
fn server_args(mut cmd: Command) -> Command {
    // `--timeout -1` is a value to refuse with the option's own rule ("must be 0 or more"),
    // not "unexpected argument '-1'".
    cmd = cmd
        .allow_negative_numbers(true)
        .next_help_heading("Server options");
    for s in SETTINGS.iter().filter(|s| s.scope == Scope::Server) {
        cmd = cmd.arg(arg(s));
    }
    cmd.arg(
        Arg::new("config")
            .short('c')
            .long("config")
            .value_name("FILE")
            // Any text, an empty one too: a path that cannot be read is the config loader's
            // error (exit 1), as a bad value of any option is (`OsString` never fails where
            // clap's `PathBuf` parser refuses an empty path with a usage error, exit 2).
            .value_parser(clap::value_parser!(OsString))
            .help("Read settings from this TOML file; flags win over it"),
    )
    .arg(
        Arg::new("check_config")
            .long("check-config")
            .action(ArgAction::SetTrue)
            .help("Check the configuration, print a summary and exit (0 = valid) without binding"),
    )
    .arg(
        Arg::new("print_config")
            .long("print-config")
            .action(ArgAction::SetTrue)
            .help("Print the effective configuration as TOML (a valid config file) and exit"),
    )
}

/// Adds the settings a `kind` service has, `--port`, and for static the `DIR` argument.
fn service_args(mut cmd: Command, kind: Kind) -> Command {
    cmd = cmd.next_help_heading(match kind {
        Kind::Static => "Static options",
        Kind::Echo => "Echo options",
        Kind::Chat => "Chat options",
        Kind::Quote => "Quote options",
        Kind::App => "HTTP options",
    });
    for s in SETTINGS.iter().filter(|s| s.scope.has(kind)) {
        if s.key == "root" {
            cmd = cmd.arg(
                Arg::new("root")
                    .value_name("DIR")
                    .help("The directory to serve [default: the current directory]"),
            );
        } else {
            cmd = cmd.arg(arg(s));
        }
    }
    // Text, checked in `collect` and refused by the merge (see `ServeArgs::bad_port`).
    cmd.arg(
        Arg::new("port")
            .long("port")
            .value_name("PORT")
            .action(ArgAction::Append)
            .help("Shorthand for --bind 127.0.0.1:PORT"),
    )
}

/// One setting as a flag.
fn arg(s: &'static Setting) -> Arg {
    let mut a =
        Arg::new(s.key)
            .long(s.flag())
            .env(s.env())
            .help(format!("{}{}", s.help, s.default_help()));
    if let Some(c) = s.short {
        a = a.short(c);
    }
    // gunicorn's flag for its `proc_name` setting, which operators type.
    if s.key == "proc_name" {
        a = a.alias("name");
    }
    match s.ty {
        // Present on the command line it is "true"; from its `OXICORN_*` variable it is the
        // variable's text, checked by the settings table as a file's value is (`1`, `yes`,
        // `off`...), not by clap's bool parser, which took only `true`/`false` and refused
        // anything else as a usage error (exit 2) not naming the variable.
        Type::Flag => a
            .action(ArgAction::SetTrue)
            .value_parser(clap::builder::ValueParser::string()),
        Type::Binds => a.value_name(s.value_name).action(ArgAction::Append),
        _ => a.value_name(s.value_name),
    }
}

/// The command line of a program that embeds oxicorn to serve its own app
/// ([`crate::server::Server`]): the server options and the app's HTTP options at the top
/// level, no service or client subcommands, named after the program.
pub fn app_command(program: &str) -> Command {
    let cmd = Command::new(program.to_string())
        .about("An application served by oxicorn: pre-forked workers, reloads, limits, logs");
    service_args(server_args(cmd), Kind::App)
}

/// `cmd` (an [`app_command`]) giving way to the program's own flags (`own`: a command holding
/// only them): an argument of oxicorn's whose short flag (`-n`) the program takes loses it,
/// and one with an alias the program takes as a flag (`--name`) loses its aliases; its long
/// flag (`--proc-name`) stays. Gunicorn's spellings came after programs had flags of their
/// own, and clap refuses two arguments with one flag (a panic in a debug build; in a release
/// build one of them takes the other's value), so a program's `#[arg(short, long)] name`
/// must keep working. A long flag of oxicorn's the program also defines is still that error:
/// the program must rename its flag.
pub fn giving_way_to(mut cmd: Command, own: &Command) -> Command {
    let shorts: Vec<char> = own
        .get_arguments()
        .flat_map(|a| {
            a.get_short()
                .into_iter()
                .chain(a.get_all_short_aliases().unwrap_or_default())
        })
        .collect();
    let longs: Vec<&str> = own
        .get_arguments()
        .flat_map(|a| {
            a.get_long()
                .into_iter()
                .chain(a.get_all_aliases().unwrap_or_default())
        })
        .collect();
    let ids: Vec<clap::Id> = cmd.get_arguments().map(|a| a.get_id().clone()).collect();
    for id in ids {
        cmd = cmd.mut_arg(id, |mut a| {
            if a.get_short().is_some_and(|c| shorts.contains(&c)) {
                a = a.short(None);
            }
            if a.get_all_aliases()
                .is_some_and(|all| all.iter().any(|x| longs.contains(x)))
            {
                a = a.alias(None);
            }
            a
        });
    }
    cmd
}

/// The server arguments in the matches of an [`app_command`] (or of a command built on it
/// with the program's own flags beside).
pub fn app_args(m: &ArgMatches) -> ServeArgs {
    // No `kind`: the program names no service, so a config file with [[service]] tables
    // (the app beside static, say) is read as it is; without them the service is the app.
    let mut args = ServeArgs {
        embeds_app: true,
        ..ServeArgs::default()
    };
    collect(m, &mut args, Kind::App, true);
    args
}

/// Parses `argv` (with the program name first).
///
/// # Errors
/// clap's error for a malformed command line (print it with [`clap::Error::exit`]: usage
/// errors exit 2), or one of ours for options that do not belong together.
pub fn parse_from<I, T>(argv: I) -> Result<Invocation, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut cmd = command();
    let m = cmd.try_get_matches_from_mut(argv)?;
    let usage = |cmd: &mut Command, msg: String| Err(cmd.error(ErrorKind::ArgumentConflict, msg));
    match m.subcommand() {
        Some(("connect", sub)) => {
            if let Some(id) = given(&m).first() {
                return usage(
                    &mut cmd,
                    format!(
                        "`{}` is a server option: `connect` is a client and takes only ADDR and --timeout",
                        shown(id)
                    ),
                );
            }
            Ok(Invocation::Connect {
                addr: sub.get_one::<String>("addr").cloned().unwrap_or_default(),
                timeout: sub
                    .get_one::<Duration>("timeout")
                    .copied()
                    .unwrap_or(CONNECT_TIMEOUT),
            })
        }
        Some(("completions", sub)) => Ok(Invocation::Completions(
            *sub.get_one::<clap_complete::Shell>("shell")
                .expect("required by clap"),
        )),
        Some(("man", _)) => Ok(Invocation::Man),
        Some((name, sub)) => {
            let kind = Kind::from_name(name).expect("every other subcommand is a service");
            let stray = given(&m).into_iter().find(|id| {
                SETTINGS
                    .iter()
                    .any(|s| s.key == *id && s.scope != Scope::Server && !s.scope.has(kind))
            });
            if let Some(id) = stray {
                return usage(
                    &mut cmd,
                    format!(
                        "`{}` is a static option, and the service is {name}: \
                         give it after `static`, or leave it out",
                        shown(id)
                    ),
                );
            }
            let mut args = ServeArgs {
                kind: Some(kind),
                ..ServeArgs::default()
            };
            collect(&m, &mut args, kind, false);
            collect(sub, &mut args, kind, true);
            Ok(Invocation::Serve(args))
        }
        None => {
            let mut args = ServeArgs::default();
            collect(&m, &mut args, Kind::Static, true);
            Ok(Invocation::Serve(args))
        }
    }
}

/// The options given on the command line at this level, as the user would name them.
fn given(m: &ArgMatches) -> Vec<&str> {
    m.ids()
        .map(|id| id.as_str())
        .filter(|id| explicit(m, id))
        .collect()
}

/// How `--help` names the option with this id.
fn shown(id: &str) -> String {
    if id == "root" {
        "DIR".to_string()
    } else {
        format!("--{}", id.replace('_', "-"))
    }
}

fn explicit(m: &ArgMatches, id: &str) -> bool {
    matches!(
        m.value_source(id),
        Some(clap::parser::ValueSource::CommandLine)
    )
}

/// Moves what `m` holds into `args`: the server's flags, and those of service `kind`; with
/// `env`, also the settings given as `OXICORN_*` environment variables (read at one level
/// only: clap reads them for every command that has the flag).
fn collect(m: &ArgMatches, args: &mut ServeArgs, kind: Kind, env: bool) {
    let here = |id: &str| {
        m.ids().any(|i| i.as_str() == id)
            && match m.value_source(id) {
                Some(clap::parser::ValueSource::CommandLine) => true,
                Some(clap::parser::ValueSource::EnvVariable) => env,
                _ => false,
            }
    };
    for s in SETTINGS {
        if !here(s.key) || !(s.scope == Scope::Server || s.scope.has(kind)) {
            continue;
        }
        if m.value_source(s.key) == Some(clap::parser::ValueSource::EnvVariable) {
            args.from_env.push(s.key);
        }
        // Every value as text, a switch's too ("true" on the command line, its variable's
        // text otherwise: a "false" or "0" is kept, and overrides the file as a variable's
        // value of any other setting does).
        for v in m.get_many::<String>(s.key).into_iter().flatten() {
            args.flags.push((s.key, v.clone()));
        }
    }
    if here("port") {
        for text in m.get_many::<String>("port").into_iter().flatten() {
            match text.parse::<u16>() {
                Ok(port) => args.flags.push(("bind", format!("127.0.0.1:{port}"))),
                Err(_) => {
                    args.bad_port.get_or_insert_with(|| text.clone());
                }
            }
        }
    }
    if here("config") {
        args.config = m.get_one::<OsString>("config").map(PathBuf::from);
    }
    args.check_config |= here("check_config");
    args.print_config |= here("print_config");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flag<'a>(a: &'a ServeArgs, key: &str) -> Vec<&'a str> {
        a.flags
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn serve(args: &[&str]) -> ServeArgs {
        match parse_from(std::iter::once("oxicorn").chain(args.iter().copied())) {
            Ok(Invocation::Serve(a)) => a,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    fn refused(args: &[&str]) -> String {
        match parse_from(std::iter::once("oxicorn").chain(args.iter().copied())) {
            Err(e) => e.to_string(),
            Ok(other) => panic!("{args:?} accepted: {other:?}"),
        }
    }

    #[test]
    fn cli_is_well_formed() {
        command().debug_assert();
    }

    #[test]
    fn options_go_before_or_after_the_service() {
        let a = serve(&["-w", "3", "echo", "-b", "127.0.0.1:1"]);
        assert_eq!(a.kind, Some(Kind::Echo));
        assert_eq!(flag(&a, "workers"), ["3"]);
        assert_eq!(flag(&a, "bind"), ["127.0.0.1:1"]);
    }

    #[test]
    fn service_options_parse() {
        let a = serve(&["chat", "--max-line", "10"]);
        assert_eq!(flag(&a, "max_line"), ["10"]);
        let a = serve(&["quote", "--quote", "hi"]);
        assert_eq!(flag(&a, "quote"), ["hi"]);
    }

    #[test]
    fn connect_has_its_own_options_only() {
        let c = parse_from(["oxicorn", "connect", "127.0.0.1:1", "--timeout", "3"]).unwrap();
        assert_eq!(
            c,
            Invocation::Connect {
                addr: "127.0.0.1:1".into(),
                timeout: Duration::from_secs(3)
            }
        );
        let c = parse_from(["oxicorn", "connect", "127.0.0.1:1"]).unwrap();
        assert!(matches!(c, Invocation::Connect { timeout, .. } if timeout == CONNECT_TIMEOUT));
        assert!(refused(&["connect", "127.0.0.1:1", "-w", "2"]).contains("-w"));
        assert!(refused(&["-w", "2", "connect", "127.0.0.1:1"]).contains("server option"));
    }

    #[test]
    fn options_of_another_service_are_usage_errors() {
        for bad in [
            &["echo", "--keep-alive", "2"][..],
            &["chat", "--quote", "x"],
            &["static", "--max-line", "3"],
            &["echo", "--no-such-flag"],
        ] {
            refused(bad);
        }
    }

    #[test]
    fn static_takes_a_dir_and_its_options_with_or_without_its_name() {
        for args in [
            &[
                "static",
                "/srv",
                "--no-listing",
                "--keep-alive",
                "2",
                "-w",
                "2",
            ][..],
            &["/srv", "--no-listing", "--keep-alive", "2", "-w", "2"],
        ] {
            let a = serve(args);
            assert_eq!(flag(&a, "root"), ["/srv"]);
            assert_eq!(flag(&a, "no_listing"), ["true"]);
            assert!(flag(&a, "show_hidden").is_empty());
            assert_eq!(flag(&a, "keep_alive"), ["2"]);
            assert_eq!(flag(&a, "workers"), ["2"]);
        }
        assert_eq!(serve(&[]), ServeArgs::default());
    }

    #[test]
    fn a_static_option_before_another_service_is_refused() {
        assert!(refused(&["--keep-alive", "2", "echo"]).contains("static option"));
    }

    /// Every server and service option takes its value as text, checked by the settings
    /// table in the merge, so a bad value is a configuration error (exit 1) whether it comes
    /// from the command line, the environment or the file; a value parser here that can fail
    /// would make that one option's bad value a usage error (exit 2) instead. Only the client
    /// commands, which have no configuration, parse with clap. A switch (`--no-listing`)
    /// takes no value on the command line but does from its variable
    /// (`OXICORN_NO_LISTING=1`): its text goes to the table too.
    #[test]
    fn no_server_option_value_is_refused_by_clap() {
        let text = [
            clap::builder::ValueParser::string().type_id(),
            clap::builder::ValueParser::os_string().type_id(),
        ];
        let root = command();
        let services = root
            .get_subcommands()
            .filter(|c| Kind::from_name(c.get_name()).is_some());
        let mut checked = 0;
        for cmd in std::iter::once(&root).chain(services) {
            for a in cmd.get_arguments() {
                if a.get_action().takes_values() || a.get_env().is_some() {
                    assert!(
                        text.contains(&a.get_value_parser().type_id()),
                        "{} {}: its value is parsed by clap",
                        cmd.get_name(),
                        a.get_id()
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 50, "{checked}");
    }

    #[test]
    fn a_port_that_is_not_a_port_number_is_left_for_the_merge() {
        let a = serve(&["--port", "abc", "--port", "99999", "--port", "8080"]);
        assert_eq!(a.bad_port.as_deref(), Some("abc"));
        assert_eq!(flag(&a, "bind"), ["127.0.0.1:8080"]);
        let a = serve(&["echo", "--port", "-1"]);
        assert_eq!(a.bad_port.as_deref(), Some("-1"));
    }

    #[test]
    fn port_is_shorthand_for_a_loopback_bind() {
        let a = serve(&["--port", "8080", "-b", "[::1]:1"]);
        assert_eq!(flag(&a, "bind"), ["[::1]:1", "127.0.0.1:8080"]);
    }
}
