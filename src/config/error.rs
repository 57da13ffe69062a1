//! The one error type of the configuration layer.
//!
//! Every variant's `Display` is a single line that names the flag (or file)
//! at fault, so `main` can print it as is and exit with [`ConfigError::exit_code`].

use std::fmt;
use std::path::PathBuf;

/// Where a value came from; shown in errors so that a bad value set in a
/// systemd `Environment=` line or a config file is easy to find.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueOrigin {
    /// A command-line flag (the flag is already named by the error).
    Flag,
    /// An environment variable, e.g. `CAIRN_DATA_DIR`.
    Env(String),
    /// A key of the `--config-file`.
    File { path: PathBuf, key: String },
}

impl fmt::Display for ValueOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueOrigin::Flag => Ok(()),
            ValueOrigin::Env(var) => write!(f, " (from {var})"),
            ValueOrigin::File { path, key } => {
                write!(f, " (from {key} in {})", path.display())
            }
        }
    }
}

/// Why the configuration could not be loaded, or that it should not be
/// (`--help`, `--version`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `--help` was given: print this text to stdout and exit 0.
    #[error("{0}")]
    Help(String),
    /// `--version` was given: print this text to stdout and exit 0.
    #[error("{0}")]
    Version(String),
    /// The command line could not be parsed: an unknown flag, a flag without
    /// its value, a stray argument.
    #[error("{message} (see --help)")]
    Usage { message: String },
    /// The `--config-file` could not be read or is not valid TOML.
    #[error("cannot load --config-file {}: {reason}", .path.display())]
    ConfigFile { path: PathBuf, reason: String },
    /// The `--config-file` has a key that is not an option.
    #[error("unknown key `{key}` in --config-file {}{hint}", .path.display())]
    UnknownKey {
        path: PathBuf,
        key: String,
        /// `"; did you mean `data_dir`?"` or empty.
        hint: String,
    },
    /// One option's value does not parse.
    #[error("invalid --{flag} {value:?}{origin}: {reason}")]
    InvalidValue {
        /// The flag's name without dashes, e.g. `heartbeat-interval`.
        flag: &'static str,
        value: String,
        origin: ValueOrigin,
        reason: String,
    },
    /// The values parse but break a rule (often one across options, named
    /// in `reason`).
    #[error("invalid --{flag}: {reason}")]
    Invalid { flag: &'static str, reason: String },
}

impl ConfigError {
    /// The flag at fault (without dashes), if the error is about one option.
    pub fn flag(&self) -> Option<&'static str> {
        match self {
            ConfigError::InvalidValue { flag, .. } | ConfigError::Invalid { flag, .. } => {
                Some(flag)
            }
            ConfigError::ConfigFile { .. } | ConfigError::UnknownKey { .. } => Some("config-file"),
            ConfigError::Help(_) | ConfigError::Version(_) | ConfigError::Usage { .. } => None,
        }
    }

    /// The process exit code etcd uses for this outcome: 0 for `--help` and
    /// `--version` (print the Display to stdout), 2 for a command line that
    /// does not parse, 1 for a bad configuration (print to stderr).
    pub fn exit_code(&self) -> i32 {
        match self {
            ConfigError::Help(_) | ConfigError::Version(_) => 0,
            ConfigError::Usage { .. } => 2,
            _ => 1,
        }
    }

    pub(super) fn invalid(flag: &'static str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            flag,
            reason: reason.into(),
        }
    }
}
