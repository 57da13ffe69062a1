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
    /// Whether the flag takes a value or is a switch.
    pub kind: Kind,
    /// What cairn does with it.
    pub support: Support,
    /// Other etcd names of the same flag (`experimental-…` before it
    /// graduated, or after), accepted as flags, `ETCD_*` variables and YAML
    /// keys.
    pub aliases: &'static [&'static str],
}

/// How a flag takes its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// `--flag value` or `--flag=value`.
    Value,
    /// A Go bool flag: `--flag` alone means true; a value needs `=`
    /// (`--flag=false`), since Go's flag package never takes the next word.
    Bool,
}

/// What cairn does with an option. Every etcd flag is one of these three:
/// cairn never starts with a flag it silently drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Support {
    /// cairn implements it.
    Implemented,
    /// Accepted without effect. Set to a value outside `agrees` (values cairn
    /// behaves as anyway, etcd's default among them), it logs one start-up
    /// warning: "flag --X accepted and ignored: `reason`".
    Ignored {
        agrees: &'static [&'static str],
        reason: &'static str,
    },
    /// Accepted only at a value in `agrees`; anything else is refused, because
    /// starting would pretend to a safety or a behaviour cairn lacks.
    Refused {
        agrees: &'static [&'static str],
        reason: &'static str,
    },
}

impl Opt {
    /// The environment variable that sets this option.
    pub fn env_var(&self) -> String {
        format!("{ENV_PREFIX}_{}", self.key.to_ascii_uppercase())
    }

    /// etcd's environment variables for this option: `ETCD_` and the flag
    /// (or an alias) in capitals with `_` for `-`.
    pub fn etcd_env_vars(&self) -> impl Iterator<Item = String> + '_ {
        std::iter::once(self.flag)
            .chain(self.aliases.iter().copied())
            .map(|name| {
                format!(
                    "{ETCD_ENV_PREFIX}_{}",
                    name.replace('-', "_").to_ascii_uppercase()
                )
            })
    }

    /// Marks a Go bool flag.
    const fn switch(mut self) -> Opt {
        self.kind = Kind::Bool;
        self.value_name = "BOOL";
        self
    }

    const fn supported(mut self, support: Support) -> Opt {
        self.support = support;
        self
    }

    const fn aka(mut self, aliases: &'static [&'static str]) -> Opt {
        self.aliases = aliases;
        self
    }
}

/// Prefix of the environment variables (`CAIRN_NAME`, ...).
pub(super) const ENV_PREFIX: &str = "CAIRN";

/// Prefix of etcd's environment variables (`ETCD_NAME`, ...), read below
/// `CAIRN_*` ones.
pub(super) const ETCD_ENV_PREFIX: &str = "ETCD";

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
        kind: Kind::Value,
        support: Support::Implemented,
        aliases: &[],
    }
}

/// An etcd option cairn accepts without effect (see [`Support::Ignored`]).
const fn ignored(
    key: &'static str,
    flag: &'static str,
    agrees: &'static [&'static str],
    reason: &'static str,
    help: &'static str,
) -> Opt {
    opt(key, flag, "VALUE", help).supported(Support::Ignored { agrees, reason })
}

/// An etcd option cairn accepts only at the values in `agrees` (see
/// [`Support::Refused`]).
const fn refused(
    key: &'static str,
    flag: &'static str,
    agrees: &'static [&'static str],
    reason: &'static str,
    help: &'static str,
) -> Opt {
    opt(key, flag, "VALUE", help).supported(Support::Refused { agrees, reason })
}

/// Every option, in the order `--help` and the sample file show them.
pub(super) const OPTIONS: &[Opt] = &[
    opt(
        CONFIG_FILE,
        "config-file",
        "PATH",
        "Path to a configuration file, cairn's TOML or etcd's YAML (etcd.conf.yml); flags, \
         CAIRN_* and ETCD_* variables override it",
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
        "Number of committed transactions that trigger a snapshot to disk [default: 10000]",
    ),
    opt(
        "experimental_snapshot_catchup_entries",
        "experimental-snapshot-catchup-entries",
        "N",
        "Number of entries kept in the raft log after a snapshot, for slow followers to catch up from [default: 5000]",
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
    )
    .aka(&["experimental-watch-progress-notify-interval"]),
    // Transport security (src/tls/), etcd's flags; the bool ones take
    // `true`/`false` (Go's flag forms `--x`, `--x=false`).
    opt(
        "cert_file",
        "cert-file",
        "PATH",
        "Path to the client server TLS cert file (PEM); needed by https:// client URLs",
    ),
    opt(
        "key_file",
        "key-file",
        "PATH",
        "Path to the client server TLS key file (PEM)",
    ),
    opt(
        "trusted_ca_file",
        "trusted-ca-file",
        "PATH",
        "Path to the client server TLS trusted CA cert file (PEM)",
    ),
    opt(
        "client_cert_auth",
        "client-cert-auth",
        "BOOL",
        "Require and verify a client certificate (against --trusted-ca-file) on https:// \
         client URLs [default: false]",
    )
    .switch(),
    opt(
        "client_crl_file",
        "client-crl-file",
        "PATH",
        "Path to the client certificate revocation list file (PEM or DER); revoked client \
         certificates are refused",
    ),
    opt(
        "client_cert_allowed_hostname",
        "client-cert-allowed-hostname",
        "HOST",
        "Refuse client certificates not valid for this host name (with --client-cert-auth)",
    ),
    opt(
        "auto_tls",
        "auto-tls",
        "BOOL",
        "Client TLS using a generated self-signed certificate when --cert-file is not given \
         [default: false]",
    )
    .switch(),
    opt(
        "peer_cert_file",
        "peer-cert-file",
        "PATH",
        "Path to the peer server TLS cert file (PEM); also the client certificate a member \
         presents to its peers",
    ),
    opt(
        "peer_key_file",
        "peer-key-file",
        "PATH",
        "Path to the peer server TLS key file (PEM)",
    ),
    opt(
        "peer_trusted_ca_file",
        "peer-trusted-ca-file",
        "PATH",
        "Path to the peer server TLS trusted CA file (PEM)",
    ),
    opt(
        "peer_client_cert_auth",
        "peer-client-cert-auth",
        "BOOL",
        "Require and verify peers' client certificates (against --peer-trusted-ca-file) \
         [default: false]",
    )
    .switch(),
    opt(
        "peer_crl_file",
        "peer-crl-file",
        "PATH",
        "Path to the peer certificate revocation list file (PEM or DER)",
    ),
    opt(
        "peer_auto_tls",
        "peer-auto-tls",
        "BOOL",
        "Peer TLS using a generated self-signed certificate when --peer-cert-file is not \
         given [default: false]",
    )
    .switch(),
    opt(
        "peer_cert_allowed_cn",
        "peer-cert-allowed-cn",
        "CN",
        "Refuse peer client certificates whose Common Name is not this",
    ),
    opt(
        "peer_cert_allowed_hostname",
        "peer-cert-allowed-hostname",
        "HOST",
        "Refuse peer client certificates not valid for this host name",
    ),
    opt(
        "cipher_suites",
        "cipher-suites",
        "SUITES",
        "Comma-separated TLS 1.2 cipher suites, by Go name (rustls offers the ECDHE AEAD \
         ones) [default: all of those]",
    ),
    opt(
        "tls_min_version",
        "tls-min-version",
        "VERSION",
        "Minimum TLS version: TLS1.2 or TLS1.3 [default: TLS1.2]",
    ),
    opt(
        "tls_max_version",
        "tls-max-version",
        "VERSION",
        "Maximum TLS version: TLS1.2 or TLS1.3 [default: TLS1.3]",
    ),
    // Authentication (src/auth/).
    opt(
        "auth_token",
        "auth-token",
        "simple|jwt,…",
        "How auth tokens are made: simple (random, kept in memory), or \
         jwt,pub-key=PATH,priv-key=PATH,sign-method=RS256|ES256|…,ttl=5m (signed) \
         [default: simple]",
    ),
    opt(
        "auth_token_ttl",
        "auth-token-ttl",
        "SECONDS",
        "Time (in seconds) a simple token lives without use [default: 300]",
    ),
    opt(
        "bcrypt_cost",
        "bcrypt-cost",
        "COST",
        "bcrypt cost of password hashes, 4 to 31 [default: 10]",
    ),
    opt(
        "log_level",
        "log-level",
        "LEVEL",
        "Log level: debug, info, warn or error [default: info]",
    ),
    // The rest of etcd 3.4's server flags (and the 3.5/3.6 names of the
    // graduated experimental ones), so that an etcd unit, manifest or
    // ETCD_* environment starts cairn. TLS, auth-token and metrics flags
    // are added with the features they configure.
    opt(
        "wal_dir",
        "wal-dir",
        "DIR",
        "Path to a dedicated directory for the raft log [default: ${data-dir}/member/wal]",
    ),
    opt(
        "debug",
        "debug",
        "BOOL",
        "Log at debug level, as --log-level=debug (etcd 3.4, deprecated there) [default: false]",
    )
    .switch(),
    ignored(
        "logger",
        "logger",
        &["zap", "capnslog"],
        "cairn logs through its own structured logger (tracing)",
        "etcd's logger ('zap' or 'capnslog'); either way cairn logs in its own structured \
         format",
    ),
    ignored(
        "log_outputs",
        "log-outputs",
        &["default", "stderr"],
        "cairn logs to stderr only (systemd's journal collects it there)",
        "Where logs go; cairn always writes them to stderr [default: default]",
    ),
    ignored(
        "log_output",
        "log-output",
        &["default", "stderr"],
        "cairn logs to stderr only (systemd's journal collects it there)",
        "etcd 3.3's name of --log-outputs [default: default]",
    ),
    ignored(
        "log_package_levels",
        "log-package-levels",
        &[""],
        "set per-module levels with RUST_LOG (e.g. RUST_LOG=info,cairn::raft=debug)",
        "Per-package log levels of etcd's capnslog; use RUST_LOG",
    ),
    ignored(
        "max_snapshots",
        "max-snapshots",
        &["5", "0"],
        "cairn keeps no snapshot files: the raft log is truncated behind the flushed state",
        "Maximum number of snapshot files to retain [default: 5]",
    ),
    ignored(
        "max_wals",
        "max-wals",
        &["5", "0"],
        "the raft log bounds its own files: 64 MB each, truncated ones purged above 512 MB",
        "Maximum number of WAL files to retain [default: 5]",
    ),
    ignored(
        "initial_election_tick_advance",
        "initial-election-tick-advance",
        &["true"],
        "raft-rs has no fast-forwarded start-up ticks; cairn waits a full election timeout",
        "Fast-forward initial election ticks on boot [default: true]",
    )
    .switch(),
    ignored(
        "backend_batch_interval",
        "backend-batch-interval",
        &[""],
        "cairn's write buffer commits into the state store every 5 ms or 256 operations",
        "Longest time before a backend commit",
    ),
    ignored(
        "backend_batch_limit",
        "backend-batch-limit",
        &["0"],
        "cairn's write buffer commits into the state store every 5 ms or 256 operations",
        "Most operations before a backend commit [default: 0]",
    ),
    ignored(
        "max_concurrent_streams",
        "max-concurrent-streams",
        &["math.MaxUint32", "4294967295"],
        "cairn does not limit the gRPC streams of a client connection",
        "Most concurrent gRPC streams per client connection [default: unlimited]",
    ),
    ignored(
        "grpc_keepalive_min_time",
        "grpc-keepalive-min-time",
        &["5s"],
        "cairn's gRPC server keeps its built-in HTTP/2 keep-alive policy",
        "Shortest interval at which a client may ping [default: 5s]",
    ),
    ignored(
        "grpc_keepalive_interval",
        "grpc-keepalive-interval",
        &["2h", "2h0m0s"],
        "cairn's gRPC server keeps its built-in HTTP/2 keep-alive policy",
        "How often the server pings an idle client [default: 2h]",
    ),
    ignored(
        "grpc_keepalive_timeout",
        "grpc-keepalive-timeout",
        &["20s"],
        "cairn's gRPC server keeps its built-in HTTP/2 keep-alive policy",
        "How long the server waits for a ping's answer [default: 20s]",
    ),
    refused(
        "discovery",
        "discovery",
        &[""],
        "discovery bootstrap is not implemented; list the members in --initial-cluster",
        "Discovery URL used to bootstrap the cluster (refused: use --initial-cluster)",
    ),
    ignored(
        "discovery_fallback",
        "discovery-fallback",
        &["proxy", "exit"],
        "it only applies with --discovery, which cairn does not implement",
        "What to do when discovery fails ('exit' or 'proxy') [default: proxy]",
    ),
    ignored(
        "discovery_proxy",
        "discovery-proxy",
        &[""],
        "it only applies with --discovery, which cairn does not implement",
        "HTTP proxy for the discovery service",
    ),
    refused(
        "discovery_srv",
        "discovery-srv",
        &[""],
        "DNS SRV bootstrap is not implemented; list the members in --initial-cluster",
        "DNS SRV domain used to bootstrap the cluster (refused: use --initial-cluster)",
    ),
    ignored(
        "discovery_srv_name",
        "discovery-srv-name",
        &[""],
        "it only applies with --discovery-srv, which cairn does not implement",
        "Suffix of the DNS SRV name queried when bootstrapping",
    ),
    ignored(
        "strict_reconfig_check",
        "strict-reconfig-check",
        &["true"],
        "cairn always checks reconfiguration requests (etcd's default)",
        "Reject reconfiguration requests that would cause quorum loss [default: true]",
    )
    .switch(),
    ignored(
        "pre_vote",
        "pre-vote",
        &["true", "false"],
        "cairn always runs raft's pre-vote phase",
        "Run raft's pre-vote phase; cairn always does [default: false]",
    )
    .switch(),
    ignored(
        "enable_v2",
        "enable-v2",
        &["false"],
        "cairn serves the v3 API only",
        "Accept etcd v2 client requests (cairn serves v3 only) [default: false]",
    )
    .switch(),
    ignored(
        "experimental_enable_v2v3",
        "experimental-enable-v2v3",
        &[""],
        "cairn serves the v3 API only",
        "Serve v2 requests through the v3 backend under a prefix (not served)",
    ),
    ignored(
        "enable_grpc_gateway",
        "enable-grpc-gateway",
        &["true"],
        "whether cairn serves the JSON gateway does not depend on this flag",
        "Serve the v3 JSON gateway on the client URLs [default: true]",
    )
    .switch(),
    // The HTTP admin's CORS (src/http/cors.rs).
    opt(
        "cors",
        "cors",
        "ORIGINS",
        "Comma-separated origins browsers may call the client URLs from (* or empty: any) \
         [default: *]",
    ),
    ignored(
        "host_whitelist",
        "host-whitelist",
        &["", "*"],
        "cairn serves no v2 HTTP API, whose Host headers this checks",
        "Hostnames accepted from insecure HTTP requests [default: *]",
    ),
    refused(
        "proxy",
        "proxy",
        &["off"],
        "cairn cannot run as an etcd v2 proxy; it only runs as a member",
        "v2 proxy mode ('off', 'readonly' or 'on'; only 'off' is accepted) [default: off]",
    ),
    ignored(
        "proxy_failure_wait",
        "proxy-failure-wait",
        &["5000"],
        "it only applies to the v2 proxy, which cairn does not implement",
        "v2 proxy: ms an endpoint stays failed [default: 5000]",
    ),
    ignored(
        "proxy_refresh_interval",
        "proxy-refresh-interval",
        &["30000"],
        "it only applies to the v2 proxy, which cairn does not implement",
        "v2 proxy: endpoints refresh interval in ms [default: 30000]",
    ),
    ignored(
        "proxy_dial_timeout",
        "proxy-dial-timeout",
        &["1000"],
        "it only applies to the v2 proxy, which cairn does not implement",
        "v2 proxy: dial timeout in ms [default: 1000]",
    ),
    ignored(
        "proxy_write_timeout",
        "proxy-write-timeout",
        &["5000"],
        "it only applies to the v2 proxy, which cairn does not implement",
        "v2 proxy: write timeout in ms [default: 5000]",
    ),
    ignored(
        "proxy_read_timeout",
        "proxy-read-timeout",
        &["0"],
        "it only applies to the v2 proxy, which cairn does not implement",
        "v2 proxy: read timeout in ms [default: 0]",
    ),
    // Corruption checks (src/corrupt.rs).
    opt(
        "experimental_initial_corrupt_check",
        "experimental-initial-corrupt-check",
        "BOOL",
        "Compare this member's HashKV with its peers' before serving and refuse to start on a \
         mismatch [default: false]",
    )
    .switch()
    .aka(&["initial-corrupt-check"]),
    opt(
        "experimental_corrupt_check_time",
        "experimental-corrupt-check-time",
        "DURATION",
        "Interval between the leader's corruption checks, which raise the CORRUPT alarm when a \
         member's HashKV differs; 0 disables them [default: 0s]",
    )
    .aka(&["corrupt-check-time"]),
    ignored(
        "experimental_backend_bbolt_freelist_type",
        "experimental-backend-bbolt-freelist-type",
        &["array", "map"],
        "cairn's state store is not bbolt",
        "bbolt's freelist type ('array' or 'map') [default: array]",
    )
    .aka(&["backend-bbolt-freelist-type"]),
    ignored(
        "experimental_enable_lease_checkpoint",
        "experimental-enable-lease-checkpoint",
        &["false"],
        "cairn does not checkpoint lease TTLs: a new leader restarts each lease's TTL, as \
         etcd does without this flag",
        "Persist the remaining TTL of leases (not implemented) [default: false]",
    )
    .switch(),
    opt(
        "experimental_compaction_batch_limit",
        "experimental-compaction-batch-limit",
        "N",
        "Most revision records the compactor examines (and deletes) per batch [default: 1000]",
    )
    .aka(&["compaction-batch-limit"]),
    opt(
        "experimental_compaction_sleep_interval",
        "experimental-compaction-sleep-interval",
        "DURATION",
        "Pause of the compactor between two deletion batches (etcd 3.5) [default: 10ms]",
    )
    .aka(&["compaction-sleep-interval"]),
    ignored(
        "experimental_warning_apply_duration",
        "experimental-warning-apply-duration",
        &["100ms"],
        "cairn has no per-request apply-duration warning",
        "Warn when applying a request takes longer than this [default: 100ms]",
    )
    .aka(&["warning-apply-duration"]),
    ignored(
        "unsafe_no_fsync",
        "unsafe-no-fsync",
        &["false"],
        "cairn always fsyncs its raft log",
        "Disable fsync, unsafe (cairn always fsyncs) [default: false]",
    )
    .switch(),
    opt(
        "force_new_cluster",
        "force-new-cluster",
        "BOOL",
        "Restart this member as the only member of its cluster, keeping its data (disaster \
         recovery when quorum is lost for good) [default: false]",
    )
    .switch(),
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
    opt(
        "enable_pprof",
        "enable-pprof",
        "BOOL",
        "Serve CPU profiles at /debug/pprof/profile?seconds=N on the client and metrics URLs \
         (pprof protobuf, for go tool pprof) [default: false]",
    )
    .switch(),
    // The dashboard (src/http/ui.rs; beyond etcd, which has no such flag).
    opt(
        "enable_ui",
        "enable-ui",
        "BOOL",
        "Serve the web dashboard at /ui on the client URLs (it can change keys: \
         enable auth, or listen on loopback only) [default: false]",
    )
    .switch(),
    // Range admission control (src/grpc/budget.rs; beyond etcd).
    opt(
        "max_range_bytes_in_flight",
        "max-range-bytes-in-flight",
        "BYTES",
        "Memory budget of the Range responses a member builds and sends at once; a range \
         that finds no room within 2 s gets 'etcdserver: too many requests'; 0 means \
         unlimited [default: 1073741824 (1 GiB)]",
    ),
    // The state-store engine (src/mvcc/engine.rs; beyond etcd, whose
    // engine is bbolt).
    opt(
        "backend_engine",
        "backend-engine",
        "sled|fjall",
        "The engine holding the applied state of a new data dir; a data dir keeps the engine \
         that created it (docs/storage.md) [default: fjall]",
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

/// The option a flag name (or one of its aliases) belongs to; `-` and `_`
/// are the same here, so this also maps an etcd YAML key or the tail of an
/// `ETCD_*` variable (lowercased) to its option.
pub(super) fn by_name(name: &str) -> Option<&'static Opt> {
    let name = name.replace('_', "-");
    OPTIONS
        .iter()
        .find(|o| o.flag == name || o.aliases.contains(&name.as_str()))
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
             CAIRN_DATA_DIR), by etcd's ETCD_* variable (ETCD_DATA_DIR) or by a key of the \
             --config-file (TOML: data_dir; etcd's YAML: data-dir). A flag overrides a \
             CAIRN_* variable, which overrides an ETCD_* one, which overrides the file. Like \
             etcd, flags may also be written with one dash (-name) and as --flag=value; \
             switches take their value after `=` (--enable-v2=false).",
        )
        .color(ColorChoice::Never)
        .disable_version_flag(true)
        // Go's flag package keeps the last of a repeated flag.
        .args_override_self(true);
    for o in OPTIONS {
        let arg = Arg::new(o.flag)
            .long(o.flag)
            .aliases(o.aliases)
            .value_name(o.value_name)
            .help(o.help)
            .action(ArgAction::Set);
        let arg = match o.kind {
            // Like Go's flag package: the word after a flag is its value,
            // even `-1` or `--something`.
            Kind::Value => arg.num_args(1).allow_hyphen_values(true),
            // A Go bool flag: alone it means true, a value needs `=`.
            Kind::Bool => arg
                .num_args(0..=1)
                .require_equals(true)
                .default_missing_value("true"),
        };
        let arg = match o.support {
            Support::Implemented => arg,
            Support::Ignored { .. } => arg.help_heading("etcd flags accepted without effect"),
            Support::Refused { .. } => {
                arg.help_heading("etcd flags accepted only at their default")
            }
        };
        command = command.arg(arg);
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
    let takes_value = |name: &str| by_name(name).is_some_and(|o| o.kind == Kind::Value);
    let is_flag = |name: &str| by_name(name).is_some() || name == "help" || name == "version";
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
