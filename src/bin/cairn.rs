//! The cairn server binary: parse configuration, set up logs, run a member.

use std::process::ExitCode;

use cairn::config::{Config, ConfigError};

/// mimalloc instead of glibc's malloc: the request path allocates per
/// message (protobuf, HTTP/2 frames, MVCC records), and glibc's malloc/free
/// showed up at 15-30 % of each thread's profile (docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // `cairn snapshot restore|status …`: the offline tools (etcdutl's).
    if std::env::args_os().nth(1).is_some_and(|a| a == "snapshot") {
        let code = cairn::snapshot::cli::run(std::env::args_os().skip(1));
        return ExitCode::from(code.clamp(0, 255) as u8);
    }
    let (cfg, warnings) = match Config::load_with_warnings(std::env::args_os(), std::env::vars()) {
        Ok(loaded) => loaded,
        Err(e @ (ConfigError::Help(_) | ConfigError::Version(_))) => {
            println!("{e}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("cairn: {e}");
            return ExitCode::from(e.exit_code().clamp(1, 255) as u8);
        }
    };
    cairn::logging::init(&cfg.log_level);
    for w in warnings {
        tracing::warn!("{w}");
    }
    match cairn::server::run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
