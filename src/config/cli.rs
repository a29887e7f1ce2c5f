//! Command-line flags. Names follow gunicorn where the concept is the same, so an operator's
//! muscle memory carries over (`-b`, `-w`, `-t`, `--graceful-timeout`, `-p`, `-c`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use super::{LogLevel, parse_duration};
use crate::net::BindAddr;

const ABOUT: &str = "A pre-fork network server: one arbiter, a pool of worker processes";

const LONG_ABOUT: &str = "\
A pre-fork network server: one small arbiter process binds the sockets and keeps a pool of \
worker processes alive; each worker serves many connections on its own event loop.

The arbiter respawns workers that die, kills workers that stop answering (--timeout), and \
reloads or scales the pool without dropping a connection (signals below).";

const AFTER_HELP: &str = "\
Examples:
  oxicorn                          serve the current directory on http://127.0.0.1:8000
  oxicorn static ./public -w 4 --access-logfile -
  oxicorn echo --bind 127.0.0.1:9000 --workers 4
  oxicorn echo -b 127.0.0.1:9000 -b unix:/tmp/echo.sock --pid /tmp/oxi.pid
  oxicorn echo -c oxicorn.toml --check-config
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
  graceful_timeout = 10";

/// `oxicorn [SERVICE] [OPTIONS]`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "oxicorn",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = AFTER_HELP,
    subcommand_value_name = "SERVICE",
    subcommand_help_heading = "Services"
)]
pub struct Cli {
    /// The service to run.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Options shared by every service.
    #[command(flatten)]
    pub server: ServerArgs,
}

/// The services.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Echo every byte back to its sender.
    Echo,
    /// Serve the files under DIR over HTTP/1.1 (the default, for the current directory).
    Static(StaticArgs),
    /// A line-based chat room across all workers (telnet and nc welcome).
    Chat(ChatArgs),
    /// Reply with the current quote, then keep what the client sent as the new one.
    Quote(QuoteArgs),
    /// A line client (like nc, with clear errors): send stdin, print what arrives.
    Connect(ConnectArgs),
}

/// `oxicorn static [DIR] [OPTIONS]`. `None` means "not given": the config file or the default
/// decides. Names follow gunicorn where it has the concept (`--keep-alive`, `--limit-*`,
/// `--access-logfile`).
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Static options")]
pub struct StaticArgs {
    /// The directory to serve [default: the current directory]
    #[arg(value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// Seconds an idle kept-alive connection waits for its next request; 0 = one request per connection [default: 5]
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    pub keep_alive: Option<Duration>,

    /// How long a client may take to send a request head; slower ones get 408 [default: 10]
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    pub header_timeout: Option<Duration>,

    /// Longest request line in bytes; longer ones get 414 [default: 4094]
    #[arg(long, value_name = "BYTES")]
    pub limit_request_line: Option<usize>,

    /// Most header fields in one request; more get 431 [default: 100]
    #[arg(long, value_name = "N")]
    pub limit_request_fields: Option<usize>,

    /// Longest header field (name and value) in bytes; longer ones get 431 [default: 8190]
    #[arg(long, value_name = "BYTES")]
    pub limit_request_field_size: Option<usize>,

    /// Serve symlinks that point outside DIR (refused with 403 otherwise)
    #[arg(long)]
    pub follow_symlinks: bool,

    /// Serve and list dotfiles and dot-directories (404 otherwise)
    #[arg(long)]
    pub show_hidden: bool,

    /// Answer 404 for directories without index.html instead of listing them
    #[arg(long)]
    pub no_listing: bool,

    /// Write one line per request here ('-' = stdout), gunicorn's format plus the response time
    #[arg(long, value_name = "FILE")]
    pub access_logfile: Option<PathBuf>,

    /// The access log line, in gunicorn's syntax: %(h)s %(l)s %(u)s %(t)s %(r)s %(m)s %(U)s
    /// %(q)s %(H)s %(s)s %(b)s %(B)s %(f)s %(a)s %(T)s %(M)s %(D)s %(L)s %(p)s
    /// [default: '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(D)s']
    #[arg(long, value_name = "FORMAT")]
    pub access_logformat: Option<String>,

    /// Send `Cache-Control: max-age=SECS` with files (not listings or errors) [default: none]
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    pub max_age: Option<Duration>,
}

/// `oxicorn chat` options.
#[derive(Debug, Clone, Default, Args)]
pub struct ChatArgs {
    /// Longest line accepted, in bytes; longer lines get an error and are discarded [default: 4096]
    #[arg(long, value_name = "BYTES")]
    pub max_line: Option<usize>,
}

/// `oxicorn quote` options.
#[derive(Debug, Clone, Default, Args)]
pub struct QuoteArgs {
    /// The quote served until a client sends another [default: An apple a day keeps the doctor away]
    #[arg(long, value_name = "TEXT")]
    pub quote: Option<String>,

    /// Longest line accepted, in bytes [default: 4096]
    #[arg(long, value_name = "BYTES")]
    pub max_line: Option<usize>,
}

/// `oxicorn connect` arguments: a client, not a service. Of the server options only
/// `--timeout` applies (it is global, so it is read from [`ServerArgs::timeout`]): it bounds
/// each wait for readiness (connecting, a server that stops reading), 10s when not given.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// Where to connect: HOST:PORT, [IPV6]:PORT or unix:PATH (--timeout bounds each wait for readiness)
    #[arg(value_name = "ADDR")]
    pub addr: String,
}

/// Options for the arbiter and its workers. `None` means "not given": the config file or the
/// default decides.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Server options")]
pub struct ServerArgs {
    /// Listen here: HOST:PORT, [IPV6]:PORT, unix:PATH or fd://N (repeatable) [default: 127.0.0.1:8000]
    #[arg(short = 'b', long = "bind", value_name = "ADDR", global = true)]
    pub bind: Vec<BindAddr>,

    /// Worker processes [default: the number of CPUs]
    #[arg(short = 'w', long, value_name = "N", global = true)]
    pub workers: Option<usize>,

    /// Kill a worker whose heartbeat is older than this; 0 turns the check off [default: 30]
    #[arg(short = 't', long, value_name = "SECS", value_parser = parse_duration, global = true)]
    pub timeout: Option<Duration>,

    /// On a stop or reload, how long connections may run on before they are cut [default: 30]
    #[arg(long, value_name = "SECS", value_parser = parse_duration, global = true)]
    pub graceful_timeout: Option<Duration>,

    /// Connections one worker serves at once; more wait in the backlog [default: 1000]
    #[arg(long, value_name = "N", global = true)]
    pub worker_connections: Option<usize>,

    /// Pending connections the kernel queues per listener [default: 2048]
    #[arg(long, value_name = "N", global = true)]
    pub backlog: Option<u32>,

    /// Close a connection silent for this long; 0 = never [default: 300 for echo, 60 for static, 30 for quote, 0 for chat]
    #[arg(long, value_name = "SECS", value_parser = parse_duration, global = true)]
    pub idle_timeout: Option<Duration>,

    /// Write the arbiter's pid here once listening; removed on exit
    #[arg(short = 'p', long = "pid", value_name = "FILE", global = true)]
    pub pid: Option<PathBuf>,

    /// debug, info, warning, error or critical [default: info]
    #[arg(long, value_name = "LEVEL", global = true)]
    pub log_level: Option<LogLevel>,

    /// Write logs to this file ('-' = stderr); reopened on USR1
    #[arg(long, value_name = "FILE", global = true)]
    pub error_logfile: Option<PathBuf>,

    /// Read settings from this TOML file; flags win over it
    #[arg(short = 'c', long = "config", value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,

    /// Check the configuration, print a summary and exit (0 = valid) without binding
    #[arg(long, global = true)]
    pub check_config: bool,

    /// Print the effective configuration as TOML and exit
    #[arg(long, global = true)]
    pub print_config: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn options_go_before_or_after_the_service() {
        let cli = Cli::try_parse_from(["oxicorn", "-w", "3", "echo", "-b", "127.0.0.1:1"]).unwrap();
        assert_eq!(cli.server.workers, Some(3));
        assert_eq!(cli.server.bind.len(), 1);
        assert!(matches!(cli.command, Some(Command::Echo)));
    }

    #[test]
    fn service_options_parse() {
        let cli = Cli::try_parse_from(["oxicorn", "chat", "--max-line", "10"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Chat(ChatArgs { max_line: Some(10) }))
        ));
        let cli = Cli::try_parse_from(["oxicorn", "quote", "--quote", "hi"]).unwrap();
        assert!(
            matches!(cli.command, Some(Command::Quote(QuoteArgs { quote: Some(ref q), .. })) if q == "hi")
        );
        let cli =
            Cli::try_parse_from(["oxicorn", "connect", "127.0.0.1:1", "--timeout", "3"]).unwrap();
        match cli.command {
            Some(Command::Connect(c)) => assert_eq!(c.addr, "127.0.0.1:1"),
            other => panic!("{other:?}"),
        }
        assert_eq!(cli.server.timeout, Some(Duration::from_secs(3)));
    }

    #[test]
    fn bad_values_are_refused_at_parse_time() {
        assert!(Cli::try_parse_from(["oxicorn", "echo", "-b", "nowhere"]).is_err());
        assert!(Cli::try_parse_from(["oxicorn", "echo", "-t", "soon"]).is_err());
        assert!(Cli::try_parse_from(["oxicorn", "echo", "--log-level", "loud"]).is_err());
        assert!(Cli::try_parse_from(["oxicorn", "static", "--keep-alive", "x"]).is_err());
    }

    #[test]
    fn static_takes_a_dir_and_its_options() {
        let cli = Cli::try_parse_from([
            "oxicorn",
            "static",
            "/srv",
            "--no-listing",
            "--keep-alive",
            "2",
            "-w",
            "2",
        ])
        .unwrap();
        let Some(Command::Static(args)) = cli.command else {
            panic!("not static: {cli:?}");
        };
        assert_eq!(args.dir, Some(PathBuf::from("/srv")));
        assert!(args.no_listing && !args.show_hidden);
        assert_eq!(args.keep_alive, Some(Duration::from_secs(2)));
        assert_eq!(cli.server.workers, Some(2));
        assert!(Cli::try_parse_from(["oxicorn"]).unwrap().command.is_none());
    }
}
