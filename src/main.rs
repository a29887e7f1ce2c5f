//! The `oxicorn` command: flags → [`Config`] → the arbiter → exit code.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use oxicorn::config::{Cli, Command, Config};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(err) => {
            eprintln!("oxicorn: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    // A client, not a server: no configuration, no arbiter.
    if let Some(Command::Connect(args)) = &cli.command {
        return Ok(oxicorn::connect::run(&args.addr, cli.server.timeout));
    }
    let config = Config::load(&cli)?;
    if cli.server.check_config {
        println!("configuration ok");
        print!("{}", config.summary());
        return Ok(0);
    }
    if cli.server.print_config {
        let text = toml::to_string(&config.to_file_config())
            .context("cannot render the configuration as TOML")?;
        print!("{text}");
        return Ok(0);
    }
    let log = oxicorn::log::init(config.log_level.filter(), config.error_logfile.as_deref())?;
    let log: &'static _ = Box::leak(Box::new(log));
    let to_file = config.error_logfile.is_some();
    match oxicorn::arbiter::run(cli, config, log) {
        Ok(code) => Ok(code),
        Err(err) => {
            if to_file {
                tracing::error!("{err}");
            }
            Err(err.into())
        }
    }
}
