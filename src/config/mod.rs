//! The member's configuration: etcd's flags, read once at start-up.
//!
//! cairn must drop into scripts and systemd units written for etcd, so every
//! option has etcd's flag name, value format and default (`--name`,
//! `--data-dir`, `--listen-client-urls`, `--initial-cluster`, ...). Options
//! come from five layers, each overriding the one before:
//!
//! ```text
//!   built-in defaults  <  --config-file         <  ETCD_* variables  <  CAIRN_* variables  <  flags
//!   Config::default()     TOML data_dir = "..."    ETCD_DATA_DIR=...    CAIRN_DATA_DIR=...    --data-dir ...
//!                         or etcd's YAML data-dir: ...
//! ```
//!
//! The options table ([`options::OPTIONS`]) holds every etcd 3.4 flag: each
//! is implemented, accepted without effect (one start-up warning saying why
//! when set to a value cairn does not behave as), or accepted only at its
//! default (refused otherwise: `--force-new-cluster`, `--discovery`, ...);
//! see [`etcd`] for the `ETCD_*` and YAML layers and that check.
//!
//! The `config` crate merges the file, the environment and the flags that were
//! actually given; whatever no layer sets keeps its default. Each value then
//! goes through one parser ([`values`]) whatever layer it came from, and
//! [`Config::validate`] checks the rules across options (election timeout
//! against heartbeat, the member's own entry in `--initial-cluster`, ...).
//! Errors are one [`ConfigError`] naming the flag at fault.
//!
//! [`Config::load`] is called once by `main`; the rest of the server only
//! reads the resulting [`Config`]. `config/cairn.toml` is a sample file with
//! every option at its default, checked by a test against [`Config::default`].
//!
//! Where cairn departs from etcd 3.4, on purpose:
//! * the config file is TOML with snake_case keys or etcd's YAML, and layers
//!   with the environment and the flags (etcd ignores its flags and
//!   variables when given a file);
//! * `--initial-cluster` left at its default follows `--name` and
//!   `--initial-advertise-peer-urls` even when the name is `default` (etcd
//!   then fails at bootstrap instead);
//! * `--quota-backend-bytes` cannot be negative (etcd's "no quota").

mod error;
mod etcd;
mod options;
mod tls;
mod values;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

use config::{Source, Value, ValueKind};
use url::Url;

pub use error::{ConfigError, ValueOrigin};
use options::{known, Opt, Support, CONFIG_FILE, ENV_PREFIX, ETCD_ENV_PREFIX, OPTIONS};
use values::CompactionMode;

/// 2 GiB: etcd's default backend quota.
pub const DEFAULT_QUOTA_BACKEND_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// 8 GiB: the largest backend quota etcd suggests.
pub const MAX_SUGGESTED_QUOTA_BACKEND_BYTES: u64 = 8 * 1024 * 1024 * 1024;
/// 10 MiB: above this etcd warns that requests may be too large for gRPC.
pub const MAX_SUGGESTED_REQUEST_BYTES: u64 = 10 * 1024 * 1024;
/// etcd's upper bound on `--election-timeout`.
pub const MAX_ELECTION_TIMEOUT: Duration = Duration::from_millis(50_000);

/// The default member name.
pub const DEFAULT_NAME: &str = "default";

/// How a member joins: by bootstrapping a new cluster or by joining one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClusterState {
    /// Bootstrap a new cluster from `--initial-cluster` (`new`).
    #[default]
    New,
    /// Join a running cluster this member was added to (`existing`).
    Existing,
}

/// When the MVCC store is compacted on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Keep this much history (`--auto-compaction-mode periodic`).
    Periodic(Duration),
    /// Keep this many revisions (`--auto-compaction-mode revision`).
    Revision(i64),
}

/// Everything a member is configured with. Build it with [`Config::load`]
/// (or [`Config::default`] in tests); fields hold resolved values, with no
/// "unset" left (e.g. `data_dir` is already `${name}.cairn`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Human-readable member name; the key of this member in `initial_cluster`.
    pub name: String,
    /// Where the raft log and the MVCC store live.
    pub data_dir: PathBuf,
    /// Addresses the gRPC/HTTP client server binds (IP addresses or localhost).
    pub listen_client_urls: Vec<Url>,
    /// Client URLs published in MemberList, which `etcdctl --cluster` dials.
    pub advertise_client_urls: Vec<Url>,
    /// Addresses the peer (raft) server binds.
    pub listen_peer_urls: Vec<Url>,
    /// This member's peer URLs as the other members reach them.
    pub initial_advertise_peer_urls: Vec<Url>,
    /// The bootstrap membership, name → peer URL; a member with several peer
    /// URLs appears once per URL, in the order given.
    pub initial_cluster: Vec<(String, Url)>,
    /// Bootstrap a new cluster or join an existing one.
    pub initial_cluster_state: ClusterState,
    /// Mixed into member and cluster IDs, so two clusters bootstrapped with
    /// the same members get different IDs.
    pub initial_cluster_token: String,
    /// Raft tick: the leader heartbeats every tick.
    pub heartbeat_interval: Duration,
    /// A follower hearing no leader for this long starts an election.
    pub election_timeout: Duration,
    /// Backend size that raises the NOSPACE alarm (0 on input means default).
    pub quota_backend_bytes: u64,
    /// Largest client request accepted (also the gRPC receive limit).
    pub max_request_bytes: u64,
    /// Most operations in one Txn (each branch counted on its own).
    pub max_txn_ops: usize,
    /// Applied entries between two snapshots of the raft log.
    pub snapshot_count: u64,
    /// Entries kept behind a snapshot for slow followers (etcd's
    /// --experimental-snapshot-catchup-entries).
    pub snapshot_catchup_entries: u64,
    /// Automatic compaction, `None` when the retention is 0.
    pub auto_compaction: Option<AutoCompaction>,
    /// Period of the progress notifications sent to watches created with
    /// `progress_notify` (etcd's 10 minutes by default).
    pub watch_progress_notify_interval: Duration,
    /// `--auth-token`: how auth tokens are made.
    pub auth_token: crate::auth::TokenConfig,
    /// `--auth-token-ttl`: a simple token's life without use.
    pub auth_token_ttl: Duration,
    /// `--bcrypt-cost` of password hashes.
    pub bcrypt_cost: u32,
    /// `debug`, `info`, `warn` or `error` (usable as a tracing filter).
    pub log_level: String,
    /// Where the raft log lives, when not under the data dir (`--wal-dir`).
    pub wal_dir: Option<PathBuf>,
    /// etcd's --force-new-cluster: restart as a one-member cluster.
    pub force_new_cluster: bool,
    /// `--initial-corrupt-check`: compare HashKV with the peers' before
    /// serving (src/corrupt.rs).
    pub initial_corrupt_check: bool,
    /// `--corrupt-check-time`: the leader's periodic check (zero: none).
    pub corrupt_check_time: Duration,
    /// `--experimental-compaction-batch-limit` and
    /// `--experimental-compaction-sleep-interval`: how the compactor cuts
    /// its deletion passes (`mvcc::compaction`).
    pub compaction_batches: crate::mvcc::compaction::Batches,
    /// Client and peer TLS (`--cert-file` … `--tls-max-version`).
    pub security: crate::tls::Security,
    /// Extra URLs serving only the probes and `/metrics` (kubeadm's 2381).
    pub listen_metrics_urls: Vec<Url>,
    /// etcd's `--metrics`: `basic` or `extensive`.
    pub metrics: String,
    /// `--enable-ui`: the dashboard at `/ui` (docs/dashboard.md).
    pub enable_ui: bool,
    /// `--enable-pprof`: CPU profiles at `/debug/pprof/` (src/http/pprof.rs).
    pub enable_pprof: bool,
    /// etcd's `--cors`: origins allowed to call from a browser (`*`: any).
    pub cors: Vec<String>,
    /// `--max-range-bytes-in-flight` (beyond etcd): the member-wide budget
    /// of Range response bytes (`grpc::budget`); 0: unlimited.
    pub max_range_bytes_in_flight: u64,
    /// `--backend-engine`: the state store's engine (cairn only); `None`:
    /// the data dir's own, or the default for a new one (`mvcc::engine`).
    pub backend_engine: Option<crate::mvcc::Engine>,
}

fn parse_url(text: &str) -> Url {
    // The defaults are literals known to parse; a test loads each of them.
    Url::parse(text).unwrap_or_else(|e| panic!("default URL {text}: {e}"))
}

impl Default for Config {
    fn default() -> Self {
        let peer = parse_url("http://localhost:2380");
        let client = parse_url("http://127.0.0.1:2379");
        Config {
            name: DEFAULT_NAME.to_string(),
            data_dir: default_data_dir(DEFAULT_NAME),
            listen_client_urls: vec![client.clone()],
            advertise_client_urls: vec![client],
            listen_peer_urls: vec![peer.clone()],
            initial_advertise_peer_urls: vec![peer.clone()],
            initial_cluster: vec![(DEFAULT_NAME.to_string(), peer)],
            initial_cluster_state: ClusterState::New,
            initial_cluster_token: "etcd-cluster".to_string(),
            heartbeat_interval: Duration::from_millis(100),
            election_timeout: Duration::from_millis(1000),
            quota_backend_bytes: DEFAULT_QUOTA_BACKEND_BYTES,
            max_request_bytes: 1_572_864,
            max_txn_ops: 128,
            snapshot_count: 10_000,
            snapshot_catchup_entries: 5_000,
            auto_compaction: None,
            watch_progress_notify_interval: Duration::from_secs(10 * 60),
            auth_token: crate::auth::TokenConfig::Simple,
            auth_token_ttl: Duration::from_secs(300),
            bcrypt_cost: 10,
            log_level: "info".to_string(),
            wal_dir: None,
            force_new_cluster: false,
            initial_corrupt_check: false,
            corrupt_check_time: Duration::ZERO,
            compaction_batches: crate::mvcc::compaction::Batches::DEFAULT,
            security: crate::tls::Security::default(),
            listen_metrics_urls: Vec::new(),
            metrics: "basic".to_string(),
            enable_ui: false,
            enable_pprof: false,
            cors: vec!["*".to_string()],
            max_range_bytes_in_flight: crate::grpc::budget::DEFAULT_BYTES,
            backend_engine: None,
        }
    }
}

/// `${name}.cairn`, etcd's `${name}.etcd` renamed.
fn default_data_dir(name: &str) -> PathBuf {
    PathBuf::from(format!("{name}.cairn"))
}

impl Config {
    /// Parses flags (`args[0]` is the program name) and the environment (pass
    /// `std::env::vars()` in main; tests pass their own map) and the config
    /// file they name (`--config-file` or `CAIRN_CONFIG_FILE`), then runs
    /// [`Config::validate`].
    ///
    /// `--help` and `--version` come back as [`ConfigError::Help`] and
    /// [`ConfigError::Version`]; see [`ConfigError::exit_code`].
    pub fn load<I, T>(
        args: I,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Self::load_with_warnings(args, env).map(|(config, _)| config)
    }

    /// [`Config::load`], also returning what deserves a warning in the log:
    /// [`Config::warnings`] plus what only loading can see (an unknown
    /// `CAIRN_*` variable, a variable shadowed by a flag, an etcd log level
    /// cairn maps to another).
    pub fn load_with_warnings<I, T>(
        args: I,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(Config, Vec<String>), ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = options::command()
            .try_get_matches_from(options::normalize_args(args))
            .map_err(options::clap_error)?;
        if matches.get_flag("version") {
            return Err(ConfigError::Version(version_text()));
        }
        let env: config::Map<String, String> = env.into_iter().collect();
        let flag = |o: &Opt| matches.get_one::<String>(o.flag).cloned();

        let config_file = flag(known(CONFIG_FILE))
            .or_else(|| env.get(&known(CONFIG_FILE).env_var()).cloned())
            .filter(|path| !path.is_empty())
            .or_else(|| env.get(&format!("{ETCD_ENV_PREFIX}_CONFIG_FILE")).cloned())
            .filter(|path| !path.is_empty())
            .map(PathBuf::from);
        let mut warnings = Vec::new();
        let mut yaml = false;

        let mut builder = config::Config::builder();
        if let Some(path) = &config_file {
            if !path.is_file() {
                let reason = match std::fs::metadata(path) {
                    Err(e) => e.to_string(),
                    Ok(_) => "not a regular file".to_string(),
                };
                return Err(ConfigError::ConfigFile {
                    path: path.clone(),
                    reason,
                });
            }
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::ConfigFile {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            yaml = etcd::is_yaml(path, &text);
            builder = match yaml {
                true => {
                    let (layer, unknown) = etcd::yaml_layer(path, &text).map_err(|reason| {
                        ConfigError::ConfigFile {
                            path: path.clone(),
                            reason,
                        }
                    })?;
                    warnings.extend(unknown);
                    builder.add_source(layer)
                }
                false => builder.add_source(
                    config::File::from(path.as_path())
                        .format(config::FileFormat::Toml)
                        .required(true),
                ),
            };
        }
        // etcd's own variables sit below cairn's: CAIRN_X is the more
        // specific, and a unit setting both means the CAIRN_ one.
        let (etcd_env, unknown) = etcd::env_layer(&env);
        warnings.extend(unknown);
        builder = builder.add_source(etcd_env);
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("_")
                .ignore_empty(true)
                .try_parsing(false)
                .source(Some(env.clone())),
        );
        let set = |var: &String| env.get(var).is_some_and(|v| !v.is_empty());
        for o in OPTIONS.iter().filter(|o| o.key != CONFIG_FILE) {
            let cairn_var = set(&o.env_var()).then(|| o.env_var());
            let etcd_var = o.etcd_env_vars().find(set);
            if let (Some(cairn_var), Some(etcd_var)) = (&cairn_var, &etcd_var) {
                warnings.push(format!("{etcd_var} is shadowed by {cairn_var}"));
            }
            if let Some(value) = flag(o) {
                for var in cairn_var.iter().chain(&etcd_var) {
                    warnings.push(format!("{var} is shadowed by --{}", o.flag));
                }
                builder = builder
                    .set_override(o.key, value)
                    .map_err(|e| ConfigError::invalid(o.flag, e.to_string()))?;
            }
        }
        let merged =
            builder
                .build()
                .and_then(|c| c.collect())
                .map_err(|e| ConfigError::ConfigFile {
                    path: config_file.clone().unwrap_or_default(),
                    reason: file_error_reason(e),
                })?;

        let layers = Layers {
            merged,
            file: config_file,
            yaml,
        };
        layers.check_keys(&mut warnings)?;
        let config = layers.resolve(&mut warnings)?;
        config.validate()?;
        warnings.extend(config.warnings());
        Ok((config, warnings))
    }

    /// Cross-field checks, run once by [`Config::load`]; the same rules as
    /// etcd's `embed.Config.Validate` and its bootstrap checks.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::invalid("name", "must not be empty"));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid("data-dir", "must not be empty"));
        }
        check_urls("listen-client-urls", &self.listen_client_urls, true)?;
        check_urls("advertise-client-urls", &self.advertise_client_urls, false)?;
        check_urls("listen-peer-urls", &self.listen_peer_urls, true)?;
        if !self.listen_metrics_urls.is_empty() {
            check_urls("listen-metrics-urls", &self.listen_metrics_urls, true)?;
        }
        check_urls(
            "initial-advertise-peer-urls",
            &self.initial_advertise_peer_urls,
            false,
        )?;
        self.validate_initial_cluster()?;
        self.validate_security()?;

        let (heartbeat, election) = (self.heartbeat_interval, self.election_timeout);
        if heartbeat.is_zero() {
            return Err(ConfigError::invalid(
                "heartbeat-interval",
                "must be greater than 0 ms",
            ));
        }
        if election < heartbeat * 5 {
            return Err(ConfigError::invalid(
                "election-timeout",
                format!(
                    "must be at least 5 × --heartbeat-interval (got {} ms and {} ms)",
                    election.as_millis(),
                    heartbeat.as_millis()
                ),
            ));
        }
        if election > MAX_ELECTION_TIMEOUT {
            return Err(ConfigError::invalid(
                "election-timeout",
                format!(
                    "must be at most {} ms (got {} ms)",
                    MAX_ELECTION_TIMEOUT.as_millis(),
                    election.as_millis()
                ),
            ));
        }
        if self.quota_backend_bytes == 0 {
            return Err(ConfigError::invalid(
                "quota-backend-bytes",
                "must be resolved to the default (2 GiB) before validation",
            ));
        }
        if self.max_request_bytes == 0 {
            return Err(ConfigError::invalid(
                "max-request-bytes",
                "must be greater than 0",
            ));
        }
        if self.max_txn_ops == 0 {
            return Err(ConfigError::invalid(
                "max-txn-ops",
                "must be greater than 0",
            ));
        }
        if self.snapshot_count == 0 {
            return Err(ConfigError::invalid(
                "snapshot-count",
                "must be greater than 0",
            ));
        }
        match self.auto_compaction {
            Some(AutoCompaction::Periodic(period)) if period.is_zero() => {
                return Err(ConfigError::invalid(
                    "auto-compaction-retention",
                    "a periodic retention must be longer than 0 (None disables compaction)",
                ));
            }
            Some(AutoCompaction::Revision(n)) if n <= 0 => {
                return Err(ConfigError::invalid(
                    "auto-compaction-retention",
                    format!("a revision retention must be positive (got {n})"),
                ));
            }
            _ => {}
        }
        if self.watch_progress_notify_interval.is_zero() {
            return Err(ConfigError::invalid(
                "watch-progress-notify-interval",
                "must be longer than 0",
            ));
        }
        if !matches!(self.log_level.as_str(), "debug" | "info" | "warn" | "error") {
            return Err(ConfigError::invalid(
                "log-level",
                format!(
                    "{:?} is not one of debug, info, warn, error",
                    self.log_level
                ),
            ));
        }
        Ok(())
    }

    /// Settings that are allowed but unwise, as log lines (not printed here).
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.quota_backend_bytes > MAX_SUGGESTED_QUOTA_BACKEND_BYTES {
            warnings.push(format!(
                "--quota-backend-bytes {} exceeds the suggested maximum of {} (8 GiB); \
                 a large backend makes snapshots, defragmentation and recovery slow",
                self.quota_backend_bytes, MAX_SUGGESTED_QUOTA_BACKEND_BYTES
            ));
        }
        if self.max_request_bytes > MAX_SUGGESTED_REQUEST_BYTES {
            warnings.push(format!(
                "--max-request-bytes {} exceeds the recommended maximum of {} (10 MiB); \
                 large requests delay heartbeats and raft replication",
                self.max_request_bytes, MAX_SUGGESTED_REQUEST_BYTES
            ));
        }
        warnings.extend(self.security_warnings());
        warnings
    }

    /// Raft election timeout in ticks of `heartbeat_interval` (at least 1):
    /// what raft-rs takes as `election_tick`, with `heartbeat_tick` = 1.
    pub fn election_ticks(&self) -> usize {
        let heartbeat = self.heartbeat_interval.as_millis().max(1);
        let ticks = self.election_timeout.as_millis() / heartbeat;
        usize::try_from(ticks).unwrap_or(usize::MAX).max(1)
    }

    /// Minimum lease TTL etcd allows, in seconds: 1.5 election timeouts,
    /// rounded up. Computed as etcd does, from whole ticks:
    /// `ceil(heartbeat × ⌊3 × election_ticks / 2⌋)`, which is
    /// `ceil(1.5 × election timeout)` whenever the election timeout is a
    /// multiple of the heartbeat (2 s with the defaults).
    pub fn min_lease_ttl(&self) -> i64 {
        let ticks = self.election_ticks() as u128;
        let millis = self.heartbeat_interval.as_millis() * (3 * ticks / 2);
        i64::try_from(millis.div_ceil(1000)).unwrap_or(i64::MAX)
    }

    /// The `--initial-cluster` rules: well-formed entries, no peer URL under
    /// two names, and this member listed with exactly its advertised peer URLs
    /// when bootstrapping.
    fn validate_initial_cluster(&self) -> Result<(), ConfigError> {
        const FLAG: &str = "initial-cluster";
        if self.initial_cluster.is_empty() {
            return Err(ConfigError::invalid(FLAG, "must not be empty"));
        }
        for (i, (name, peer)) in self.initial_cluster.iter().enumerate() {
            if name.is_empty() {
                return Err(ConfigError::invalid(
                    FLAG,
                    format!("{}: empty member name", values::display_url(peer)),
                ));
            }
            values::check_url(peer)
                .map_err(|reason| ConfigError::invalid(FLAG, format!("{name}={reason}")))?;
            if let Some((other, _)) = self.initial_cluster[..i].iter().find(|(_, u)| u == peer) {
                return Err(ConfigError::invalid(
                    FLAG,
                    format!(
                        "peer URL {} is listed twice (for {other} and {name})",
                        values::display_url(peer)
                    ),
                ));
            }
        }
        let mut own = self.own_peer_urls();
        match self.initial_cluster_state {
            ClusterState::New => {
                if own.is_empty() {
                    return Err(ConfigError::invalid(
                        FLAG,
                        format!(
                            "this member ({}) is not listed; add {}={}",
                            self.name,
                            self.name,
                            values::display_urls(&self.initial_advertise_peer_urls)
                        ),
                    ));
                }
                let mut advertised: Vec<&Url> = self.initial_advertise_peer_urls.iter().collect();
                own.sort();
                advertised.sort();
                advertised.dedup();
                if own != advertised {
                    return Err(ConfigError::invalid(
                        FLAG,
                        format!(
                            "lists {} with {} but --initial-advertise-peer-urls is {}",
                            self.name,
                            values::display_urls(own),
                            values::display_urls(advertised)
                        ),
                    ));
                }
            }
            ClusterState::Existing => {
                if own.len() == self.initial_cluster.len() {
                    return Err(ConfigError::invalid(
                        FLAG,
                        "with --initial-cluster-state existing it must also list the running \
                         members to join",
                    ));
                }
            }
        }
        Ok(())
    }

    /// The peer URLs `initial_cluster` gives for this member.
    fn own_peer_urls(&self) -> Vec<&Url> {
        self.initial_cluster
            .iter()
            .filter(|(name, _)| *name == self.name)
            .map(|(_, url)| url)
            .collect()
    }
}

/// URL-list checks shared by the four URL options; `bind` for the lists a
/// server listens on.
fn check_urls(flag: &'static str, urls: &[Url], bind: bool) -> Result<(), ConfigError> {
    if urls.is_empty() {
        return Err(ConfigError::invalid(flag, "expected at least one URL"));
    }
    for url in urls {
        let checked = if bind {
            values::check_bind_url(url)
        } else {
            values::check_url(url)
        };
        checked.map_err(|reason| ConfigError::invalid(flag, reason))?;
    }
    Ok(())
}

/// What `--version` prints, in etcd's `Key: value` lines.
fn version_text() -> String {
    format!(
        "cairn Version: {}\nOS/Arch: {}/{}",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

/// One line saying why the file did not load. A TOML parse error spans
/// several lines (position, the quoted line, a caret, the message); keep the
/// position and the message.
fn file_error_reason(error: config::ConfigError) -> String {
    let text = match error {
        config::ConfigError::FileParse { cause, .. } => cause.to_string(),
        other => other.to_string(),
    };
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let head = lines.next().unwrap_or_default().to_string();
    let quoted = |l: &&str| {
        l.starts_with('|')
            || l.split_once(" |")
                .is_some_and(|(n, _)| n.parse::<u64>().is_ok())
    };
    let detail: Vec<&str> = lines.filter(|l| !quoted(l)).collect();
    match detail.is_empty() {
        true => head,
        false => format!("{head}: {}", detail.join(" ")),
    }
}

/// A value as one layer gave it: a single word, or a list (a TOML array).
enum Raw {
    Text(String),
    List(Vec<String>),
}

impl Raw {
    fn shown(&self) -> String {
        match self {
            Raw::Text(text) => text.clone(),
            Raw::List(items) => items.join(","),
        }
    }

    fn text(&self) -> Result<&str, String> {
        match self {
            Raw::Text(text) => Ok(text),
            Raw::List(_) => Err("expected a single value, not a list".into()),
        }
    }

    fn items(&self) -> Vec<String> {
        match self {
            Raw::Text(text) => vec![text.clone()],
            Raw::List(items) => items.clone(),
        }
    }
}

/// The origin the `config` crate gives values read from the environment.
const ENV_ORIGIN: &str = "the environment";

/// The merged layers, from which each option is read with the layer it came
/// from, so that errors can say where a bad value was set.
struct Layers {
    merged: config::Map<String, Value>,
    file: Option<PathBuf>,
    /// The file is etcd's YAML (keys are flag names), not cairn's TOML.
    yaml: bool,
}

impl Layers {
    /// Which layer a merged value came from. The `config` crate records the
    /// file path as the origin of file values and "the environment" for
    /// variables; flags are overrides, which have none.
    fn origin(&self, o: &Opt, value: &Value) -> ValueOrigin {
        match value.origin() {
            None => ValueOrigin::Flag,
            Some(ENV_ORIGIN) => ValueOrigin::Env(o.env_var()),
            Some(origin) if origin.starts_with(etcd::ETCD_ENV_ORIGIN) => {
                ValueOrigin::Env(origin[etcd::ETCD_ENV_ORIGIN.len()..].to_string())
            }
            Some(_) => ValueOrigin::File {
                path: self.file.clone().unwrap_or_default(),
                key: match self.yaml {
                    true => o.flag.to_string(),
                    false => o.key.to_string(),
                },
            },
        }
    }

    /// Unknown keys in the file are errors (a typo must not be ignored);
    /// unknown `CAIRN_*` variables only warnings, as in etcd.
    fn check_keys(&self, warnings: &mut Vec<String>) -> Result<(), ConfigError> {
        let mut keys: Vec<&String> = self.merged.keys().collect();
        keys.sort();
        for key in keys {
            let from_env = self.merged[key]
                .origin()
                .is_some_and(|o| o == ENV_ORIGIN || o.starts_with(etcd::ETCD_ENV_ORIGIN));
            let known = options::by_key(key).is_some_and(|o| from_env || o.key != CONFIG_FILE);
            if known {
                continue;
            }
            if from_env {
                warnings.push(format!(
                    "unknown environment variable {ENV_PREFIX}_{} ignored",
                    key.to_ascii_uppercase()
                ));
                continue;
            }
            let hint = match options::suggest(key) {
                Some(CONFIG_FILE) => "; a config file cannot name another one".to_string(),
                Some(good) => format!("; did you mean `{good}`?"),
                None => String::new(),
            };
            return Err(ConfigError::UnknownKey {
                path: self.file.clone().unwrap_or_default(),
                key: key.clone(),
                hint,
            });
        }
        Ok(())
    }

    /// Reads and parses one option, if any layer set it.
    fn get<T>(
        &self,
        key: &str,
        parse: impl FnOnce(&Raw) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        let o = known(key);
        let Some(value) = self.merged.get(key) else {
            return Ok(None);
        };
        let origin = self.origin(o, value);
        let raw = raw(value).map_err(|reason| ConfigError::InvalidValue {
            flag: o.flag,
            value: value.to_string(),
            origin: origin.clone(),
            reason,
        })?;
        parse(&raw)
            .map(Some)
            .map_err(|reason| ConfigError::InvalidValue {
                flag: o.flag,
                value: raw.shown(),
                origin,
                reason,
            })
    }

    /// Builds the config: defaults, overridden by whatever a layer set.
    fn resolve(&self, warnings: &mut Vec<String>) -> Result<Config, ConfigError> {
        let defaults = Config::default();
        let name = self
            .get("name", |raw| {
                let name = raw.text()?.trim();
                match name.is_empty() {
                    true => Err("must not be empty".to_string()),
                    false => Ok(name.to_string()),
                }
            })?
            .unwrap_or(defaults.name.clone());
        // etcd: an empty --data-dir also means ${name}.etcd.
        let data_dir = self
            .get("data_dir", |raw| Ok(raw.text()?.trim().to_string()))?
            .filter(|dir| !dir.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| default_data_dir(&name));
        let urls = |key| self.get(key, |raw| values::url_list(&raw.items()));
        let listen_client_urls = urls("listen_client_urls")?;
        let advertise_client_urls = urls("advertise_client_urls")?;
        // etcd refuses to guess what to advertise once the listen URLs moved.
        if listen_client_urls.is_some() && advertise_client_urls.is_none() {
            return Err(ConfigError::invalid(
                "advertise-client-urls",
                "is required when --listen-client-urls is set explicitly",
            ));
        }
        let initial_advertise_peer_urls = urls("initial_advertise_peer_urls")?
            .unwrap_or(defaults.initial_advertise_peer_urls.clone());
        let initial_cluster = self
            .get("initial_cluster", |raw| {
                values::initial_cluster(&raw.items())
            })?
            .filter(|cluster| *cluster != defaults.initial_cluster)
            // Left at its default, the cluster is this member alone, as etcd's
            // `--name abc` alone gives `abc=<initial-advertise-peer-urls>`.
            .unwrap_or_else(|| {
                initial_advertise_peer_urls
                    .iter()
                    .map(|url| (name.clone(), url.clone()))
                    .collect()
            });
        let text = |raw: &Raw| raw.text().map(|t| t.trim().to_string());
        let mode = self
            .get("auto_compaction_mode", |raw| {
                values::compaction_mode(raw.text()?)
            })?
            .unwrap_or(CompactionMode::Periodic);
        let auto_compaction = self
            .get("auto_compaction_retention", |raw| {
                values::retention(mode, raw.text()?)
            })?
            .unwrap_or(None);
        let switch = |key| self.get(key, |raw| values::go_bool(raw.text()?));
        let log_level = match self.get("log_level", |raw| values::log_level(raw.text()?))? {
            Some((level, mapped)) => {
                if mapped {
                    warnings.push(format!(
                        "--log-level: cairn has no panic or fatal level; logging at {level}"
                    ));
                }
                level
            }
            None => defaults.log_level.clone(),
        };
        // etcd 3.4's --debug: debug level, whatever --log-level says.
        let log_level = match switch("debug")? {
            Some(true) => "debug".to_string(),
            _ => log_level,
        };
        self.check_unimplemented(warnings)?;
        let number = |key| self.get(key, |raw| values::positive(raw.text()?));
        Ok(Config {
            data_dir,
            listen_client_urls: listen_client_urls.unwrap_or(defaults.listen_client_urls),
            advertise_client_urls: advertise_client_urls.unwrap_or(defaults.advertise_client_urls),
            listen_peer_urls: urls("listen_peer_urls")?.unwrap_or(defaults.listen_peer_urls),
            initial_advertise_peer_urls,
            initial_cluster,
            initial_cluster_state: self
                .get("initial_cluster_state", |raw| {
                    values::cluster_state(raw.text()?)
                })?
                .unwrap_or(defaults.initial_cluster_state),
            initial_cluster_token: self
                .get("initial_cluster_token", text)?
                .unwrap_or(defaults.initial_cluster_token),
            heartbeat_interval: self
                .get("heartbeat_interval", |raw| values::millis(raw.text()?))?
                .unwrap_or(defaults.heartbeat_interval),
            election_timeout: self
                .get("election_timeout", |raw| values::millis(raw.text()?))?
                .unwrap_or(defaults.election_timeout),
            // etcd: 0 means the default quota.
            quota_backend_bytes: self
                .get("quota_backend_bytes", |raw| values::unsigned(raw.text()?))?
                .filter(|&quota| quota != 0)
                .unwrap_or(defaults.quota_backend_bytes),
            max_request_bytes: number("max_request_bytes")?.unwrap_or(defaults.max_request_bytes),
            max_txn_ops: match number("max_txn_ops")? {
                Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
                None => defaults.max_txn_ops,
            },
            snapshot_count: number("snapshot_count")?.unwrap_or(defaults.snapshot_count),
            snapshot_catchup_entries: number("experimental_snapshot_catchup_entries")?
                .unwrap_or(defaults.snapshot_catchup_entries),
            auto_compaction,
            watch_progress_notify_interval: self
                .get("watch_progress_notify_interval", |raw| {
                    values::go_duration(raw.text()?)
                })?
                .unwrap_or(defaults.watch_progress_notify_interval),
            auth_token: self
                .get("auth_token", |raw| values::auth_token(raw.text()?))?
                .unwrap_or(defaults.auth_token),
            auth_token_ttl: self
                .get("auth_token_ttl", |raw| values::positive(raw.text()?))?
                .map(Duration::from_secs)
                .unwrap_or(defaults.auth_token_ttl),
            bcrypt_cost: self
                .get("bcrypt_cost", |raw| values::bcrypt_cost(raw.text()?))?
                .unwrap_or(defaults.bcrypt_cost),
            log_level,
            force_new_cluster: switch("force_new_cluster")?.unwrap_or(false),
            initial_corrupt_check: switch("experimental_initial_corrupt_check")?.unwrap_or(false),
            corrupt_check_time: self
                .get("experimental_corrupt_check_time", |raw| {
                    values::go_duration(raw.text()?)
                })?
                .unwrap_or(defaults.corrupt_check_time),
            compaction_batches: crate::mvcc::compaction::Batches {
                limit: self
                    .get("experimental_compaction_batch_limit", |raw| {
                        values::unsigned(raw.text()?)
                    })?
                    .map_or(defaults.compaction_batches.limit, |n| {
                        usize::try_from(n).unwrap_or(usize::MAX)
                    }),
                pause: self
                    .get("experimental_compaction_sleep_interval", |raw| {
                        values::go_duration(raw.text()?)
                    })?
                    .unwrap_or(defaults.compaction_batches.pause),
            },
            wal_dir: self
                .get("wal_dir", |raw| Ok(raw.text()?.trim().to_string()))?
                .filter(|dir| !dir.is_empty())
                .map(PathBuf::from),
            security: self.security()?,
            // etcd: empty (the default) means none.
            listen_metrics_urls: self
                .get("listen_metrics_urls", |raw| {
                    match raw.items().iter().all(|i| i.trim().is_empty()) {
                        true => Ok(Vec::new()),
                        false => values::url_list(&raw.items()),
                    }
                })?
                .unwrap_or_default(),
            metrics: self
                .get("metrics", |raw| match raw.text()?.trim() {
                    level @ ("basic" | "extensive") => Ok(level.to_string()),
                    other => Err(format!("must be basic or extensive, not {other:?}")),
                })?
                .unwrap_or(defaults.metrics),
            enable_ui: switch("enable_ui")?.unwrap_or(defaults.enable_ui),
            enable_pprof: switch("enable_pprof")?.unwrap_or(defaults.enable_pprof),
            max_range_bytes_in_flight: self
                .get("max_range_bytes_in_flight", |raw| {
                    values::unsigned(raw.text()?)
                })?
                .unwrap_or(defaults.max_range_bytes_in_flight),
            backend_engine: self
                .get("backend_engine", |raw| match raw.text()?.trim() {
                    "" => Ok(None),
                    text => crate::mvcc::Engine::parse(text).map(Some),
                })?
                .flatten()
                .or(defaults.backend_engine),
            cors: self
                .get("cors", |raw| {
                    // etcd: `*`, or URLs with a host and a port.
                    raw.items()
                        .iter()
                        .flat_map(|item| item.split(','))
                        .map(str::trim)
                        .filter(|o| !o.is_empty())
                        .map(|o| {
                            match o == "*"
                                || Url::parse(o).is_ok_and(|u| {
                                    u.port_or_known_default().is_some()
                                        && o.rsplit_once(':')
                                            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
                                }) {
                                true => Ok(o.to_string()),
                                false => Err(format!(
                                    "URL address does not have the form \"host:port\": {o}"
                                )),
                            }
                        })
                        .collect::<Result<Vec<_>, _>>()
                })?
                .unwrap_or(defaults.cors),
            name,
        })
    }

    /// The etcd options cairn accepts without implementing: a warning for
    /// each one set to a value cairn does not behave as, an error for a
    /// refused one (see [`Support`]).
    fn check_unimplemented(&self, warnings: &mut Vec<String>) -> Result<(), ConfigError> {
        for o in OPTIONS.iter().filter(|o| o.support != Support::Implemented) {
            let shown = self.get(o.key, |raw| Ok(raw.shown()))?;
            let Some(shown) = shown else { continue };
            let check = etcd::check_unimplemented(o, &shown);
            match check {
                Ok(warning) => warnings.extend(warning),
                Err(reason) => {
                    let value = self.merged.get(o.key).map(|v| self.origin(o, v));
                    return Err(ConfigError::InvalidValue {
                        flag: o.flag,
                        value: shown,
                        origin: value.unwrap_or(ValueOrigin::Flag),
                        reason,
                    });
                }
            }
        }
        Ok(())
    }
}

/// A merged value as text or a list of texts, whatever its TOML type.
fn raw(value: &Value) -> Result<Raw, String> {
    fn scalar(value: &Value) -> Result<String, String> {
        match &value.kind {
            ValueKind::String(s) => Ok(s.clone()),
            ValueKind::I64(_)
            | ValueKind::I128(_)
            | ValueKind::U64(_)
            | ValueKind::U128(_)
            | ValueKind::Float(_)
            | ValueKind::Boolean(_) => Ok(value.to_string()),
            ValueKind::Nil => Err("expected a value".into()),
            ValueKind::Table(_) | ValueKind::Array(_) => {
                Err("expected a string, a number or a list of strings".into())
            }
        }
    }
    match &value.kind {
        ValueKind::Array(items) => items
            .iter()
            .map(scalar)
            .collect::<Result<_, _>>()
            .map(Raw::List),
        _ => scalar(value).map(Raw::Text),
    }
}

/// `--initial-cluster`'s format (`name=url,…`), for tools outside the server
/// (`cairn snapshot restore`).
pub fn parse_initial_cluster(text: &str) -> Result<Vec<(String, Url)>, String> {
    values::initial_cluster(&[text.to_string()])
}

/// A comma-separated URL list, as `--initial-advertise-peer-urls` takes.
pub fn parse_url_list(text: &str) -> Result<Vec<Url>, String> {
    values::url_list(&[text.to_string()])
}
