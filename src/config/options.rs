//! The table of options and the command line built from it.
//!
//! [`OPTIONS`] is the single list of what can be configured: each entry gives
//! the file key (`data_dir`), from which the flag (`--data-dir`) and the
//! environment variable (`CAIRN_DATA_DIR`) are derived, so the three layers
//! cannot disagree on names.

use std::ffi::OsString;

use clap::{Arg, ArgAction, ColorChoice, Command};

use super::ConfigError;

/// One configurable option.
pub(super) struct Opt {
    /// Key in the config file; the flag is this with `-` for `_`.
    pub key: &'static str,
    /// Flag name without the leading dashes.
    pub flag: &'static str,
    pub value_name: &'static str,
    pub help: &'static str,
}

impl Opt {
    /// The environment variable that sets this option.
    pub fn env_var(&self) -> String {
        format!("{ENV_PREFIX}_{}", self.key.to_ascii_uppercase())
    }
}

/// Prefix of the environment variables (`CAIRN_NAME`, ...).
pub(super) const ENV_PREFIX: &str = "CAIRN";

/// The option naming the config file: a flag or a variable, never a file key.
pub(super) const CONFIG_FILE: &str = "config_file";

const fn opt(
    key: &'static str,
    flag: &'static str,
    value_name: &'static str,
    help: &'static str,
) -> Opt {
    Opt {
        key,
        flag,
        value_name,
        help,
    }
}

/// Every option, in the order `--help` and the sample file show them.
pub(super) const OPTIONS: &[Opt] = &[
    opt(
        CONFIG_FILE,
        "config-file",
        "PATH",
        "Path to a TOML configuration file; flags and CAIRN_* variables override it",
    ),
    opt(
        "name",
        "name",
        "NAME",
        "Human-readable name for this member [default: default]",
    ),
    opt(
        "data_dir",
        "data-dir",
        "DIR",
        "Path to the data directory [default: ${name}.cairn]",
    ),
    opt(
        "listen_client_urls",
        "listen-client-urls",
        "URLS",
        "Comma-separated URLs to listen on for client traffic [default: http://127.0.0.1:2379]",
    ),
    opt(
        "advertise_client_urls",
        "advertise-client-urls",
        "URLS",
        "Comma-separated client URLs of this member, advertised to the cluster; required when \
         --listen-client-urls is set [default: http://127.0.0.1:2379]",
    ),
    opt(
        "listen_peer_urls",
        "listen-peer-urls",
        "URLS",
        "Comma-separated URLs to listen on for peer traffic [default: http://localhost:2380]",
    ),
    opt(
        "initial_advertise_peer_urls",
        "initial-advertise-peer-urls",
        "URLS",
        "Comma-separated peer URLs of this member, advertised to the cluster \
         [default: http://localhost:2380]",
    ),
    opt(
        "initial_cluster",
        "initial-cluster",
        "NAME=URL,...",
        "Initial cluster configuration for bootstrapping; a member with several peer URLs \
         appears once per URL [default: ${name}=${initial-advertise-peer-urls}]",
    ),
    opt(
        "initial_cluster_state",
        "initial-cluster-state",
        "new|existing",
        "Initial cluster state: 'new' to bootstrap a cluster, 'existing' to join one \
         [default: new]",
    ),
    opt(
        "initial_cluster_token",
        "initial-cluster-token",
        "TOKEN",
        "Initial cluster token, distinguishing clusters bootstrapped with the same members \
         [default: etcd-cluster]",
    ),
    opt(
        "heartbeat_interval",
        "heartbeat-interval",
        "MS",
        "Time (in milliseconds) of a heartbeat interval [default: 100]",
    ),
    opt(
        "election_timeout",
        "election-timeout",
        "MS",
        "Time (in milliseconds) for an election to time out; at least 5 heartbeats, at most \
         50000 [default: 1000]",
    ),
    opt(
        "quota_backend_bytes",
        "quota-backend-bytes",
        "BYTES",
        "Raise an alarm when the backend size exceeds this quota; 0 means the default \
         [default: 2147483648 (2 GiB)]",
    ),
    opt(
        "max_request_bytes",
        "max-request-bytes",
        "BYTES",
        "Maximum client request size in bytes the server accepts [default: 1572864]",
    ),
    opt(
        "max_txn_ops",
        "max-txn-ops",
        "N",
        "Maximum number of operations permitted in a transaction [default: 128]",
    ),
    opt(
        "snapshot_count",
        "snapshot-count",
        "N",
        "Number of committed transactions that trigger a snapshot to disk [default: 100000]",
    ),
    opt(
        "auto_compaction_mode",
        "auto-compaction-mode",
        "periodic|revision",
        "How to read --auto-compaction-retention [default: periodic]",
    ),
    opt(
        "auto_compaction_retention",
        "auto-compaction-retention",
        "RETENTION",
        "Auto compaction retention: in periodic mode a duration (30m, 1h) or a number of \
         hours, in revision mode a number of revisions; 0 disables it [default: 0]",
    ),
    opt(
        "watch_progress_notify_interval",
        "watch-progress-notify-interval",
        "DURATION",
        "How often watches created with progress_notify get a progress notification when no \
         event reached them (etcd 3.4: --experimental-watch-progress-notify-interval) \
         [default: 10m]",
    ),
    opt(
        "log_level",
        "log-level",
        "LEVEL",
        "Log level: debug, info, warn or error [default: info]",
    ),
    // HTTP admin (src/http/).
    opt(
        "listen_metrics_urls",
        "listen-metrics-urls",
        "URLS",
        "Comma-separated URLs serving /health, /livez, /readyz and /metrics only [default: none]",
    ),
    opt(
        "metrics",
        "metrics",
        "LEVEL",
        "basic or extensive (etcd's; cairn exports the same metrics for both) [default: basic]",
    ),
];

/// The option with this file key.
pub(super) fn by_key(key: &str) -> Option<&'static Opt> {
    OPTIONS.iter().find(|o| o.key == key)
}

/// The option with this file key, which must exist (a typo is a bug caught
/// by every test).
pub(super) fn known(key: &str) -> &'static Opt {
    by_key(key).unwrap_or_else(|| panic!("no option with key {key}"))
}

/// The closest option key to a misspelt one (`data-dir` → `data_dir`,
/// `datadir` → `data_dir`), for error hints.
pub(super) fn suggest(key: &str) -> Option<&'static str> {
    let squash = |s: &str| {
        s.chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase()
    };
    let wanted = squash(key);
    OPTIONS
        .iter()
        .find(|o| squash(o.key) == wanted)
        .map(|o| o.key)
}

/// The command line parser. Every option takes one string value, parsed later
/// by the same code as the file and the environment.
pub(super) fn command() -> Command {
    let mut command = Command::new("cairn")
        .about(
            "A distributed, strongly consistent key-value store, wire-compatible with etcd v3.\n\
             Flags take the same names, values and defaults as etcd's.",
        )
        .after_help(
            "Every flag can also be set by a CAIRN_* environment variable (--data-dir is \
             CAIRN_DATA_DIR) or by a key of the --config-file (data_dir). A flag overrides \
             the variable, which overrides the file. Like etcd, flags may also be written \
             with one dash (-name) and as --flag=value.",
        )
        .color(ColorChoice::Never)
        .disable_version_flag(true)
        // Go's flag package keeps the last of a repeated flag.
        .args_override_self(true);
    for o in OPTIONS {
        command = command.arg(
            Arg::new(o.flag)
                .long(o.flag)
                .value_name(o.value_name)
                .help(o.help)
                .action(ArgAction::Set)
                .num_args(1)
                // Like Go's flag package: the word after a flag is its value,
                // even `-1` or `--something`.
                .allow_hyphen_values(true),
        );
    }
    command.arg(
        Arg::new("version")
            .long("version")
            .help("Print the version and exit")
            .action(ArgAction::SetTrue),
    )
}

/// Rewrites etcd's single-dash long flags (`-name x`, `-data-dir=x`), which
/// Go's flag package accepts and older etcd docs and units use, into clap's
/// `--name x`. A word that is the value of the previous flag is left alone,
/// and so is everything after `--`.
pub(super) fn normalize_args<I, T>(args: I) -> Vec<OsString>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let takes_value = |name: &str| OPTIONS.iter().any(|o| o.flag == name);
    let is_flag = |name: &str| takes_value(name) || name == "help" || name == "version";
    let mut out = Vec::new();
    let mut value_next = false;
    let mut rest_verbatim = false;
    for (i, arg) in args.into_iter().enumerate() {
        let arg: OsString = arg.into();
        let text = arg.to_str();
        if i == 0 || rest_verbatim || text.is_none() {
            out.push(arg);
            continue;
        }
        let text = text.unwrap_or_default();
        if value_next {
            value_next = false;
            out.push(arg);
            continue;
        }
        if text == "--" {
            rest_verbatim = true;
            out.push(arg);
            continue;
        }
        let long = text
            .strip_prefix("--")
            .or_else(|| text.strip_prefix('-'))
            .filter(|rest| {
                let name = rest.split('=').next().unwrap_or_default();
                is_flag(name)
            });
        match long {
            Some(rest) => {
                value_next = !rest.contains('=') && takes_value(rest);
                out.push(format!("--{rest}").into());
            }
            None => out.push(arg),
        }
    }
    out
}

/// Turns clap's outcome into ours: `--help` becomes [`ConfigError::Help`],
/// anything else a one-line [`ConfigError::Usage`].
pub(super) fn clap_error(error: clap::Error) -> ConfigError {
    use clap::error::ErrorKind;
    let rendered = error.render().to_string();
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        return ConfigError::Help(rendered);
    }
    let mut lines = rendered.lines().map(str::trim).filter(|l| !l.is_empty());
    let mut message = lines
        .next()
        .map(|l| l.trim_start_matches("error:").trim().to_string())
        .unwrap_or_else(|| error.kind().to_string());
    if let Some(tip) = lines.find(|l| l.starts_with("tip:")) {
        message = format!("{message}; {tip}");
    }
    ConfigError::Usage { message }
}
