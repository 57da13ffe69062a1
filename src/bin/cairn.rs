//! The cairn server binary: parse configuration, set up logs, run a member.

use std::process::ExitCode;

use cairn::config::{Config, ConfigError};

fn main() -> ExitCode {
    let cfg = match Config::load(std::env::args_os(), std::env::vars()) {
        Ok(cfg) => cfg,
        Err(ConfigError::Help(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("cairn: {e}");
            return ExitCode::from(2);
        }
    };
    cairn::logging::init(&cfg.log_level);
    match cairn::server::run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("cairn: {e:#}");
            ExitCode::FAILURE
        }
    }
}
