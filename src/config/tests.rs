//! Table-driven tests of loading: each case gives the flags, the environment
//! and the config file, and expects either the whole `Config` (the defaults
//! with some fields changed) or an error about a named flag.

use std::time::Duration;

use super::*;

/// The expected outcome of a case.
enum Expect {
    /// `Config::default()` with these changes, compared field by field.
    Config(fn(&mut Config)),
    /// An error about `flag` (per `ConfigError::flag`) whose one-line message
    /// contains `text`.
    Error {
        flag: Option<&'static str>,
        text: &'static str,
    },
}

struct Case {
    name: &'static str,
    args: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
    /// Contents of a config file, passed with `--config-file`.
    file: Option<&'static str>,
    expect: Expect,
}

use Expect::{Config as Is, Error as Fails};

fn url(text: &str) -> Url {
    Url::parse(text).expect("test URL")
}

fn urls(texts: &[&str]) -> Vec<Url> {
    texts.iter().map(|t| url(t)).collect()
}

fn members(pairs: &[(&str, &str)]) -> Vec<(String, Url)> {
    pairs.iter().map(|(n, u)| (n.to_string(), url(u))).collect()
}

fn load(case: &Case) -> Result<(Config, Vec<String>), ConfigError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut args: Vec<String> = std::iter::once("cairn")
        .chain(case.args.iter().copied())
        .map(String::from)
        .collect();
    if let Some(contents) = case.file {
        let path = dir.path().join("cairn.toml");
        std::fs::write(&path, contents).expect("write config file");
        args.push("--config-file".into());
        args.push(path.display().to_string());
    }
    let env = case.env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    Config::load_with_warnings(args, env)
}

fn check(cases: &[Case]) {
    for case in cases {
        match (load(case), &case.expect) {
            (Ok((got, _)), Is(edit)) => {
                let mut want = Config::default();
                edit(&mut want);
                assert_eq!(got, want, "case {:?}", case.name);
            }
            (Err(err), Fails { flag, text }) => {
                let message = err.to_string();
                assert_eq!(err.flag(), *flag, "case {:?}: {message}", case.name);
                assert!(
                    message.contains(text),
                    "case {:?}: {message:?} lacks {text:?}",
                    case.name
                );
                assert!(!message.contains('\n'), "case {:?}: {message:?}", case.name);
                assert_ne!(err.exit_code(), 0, "case {:?}", case.name);
            }
            (got, _) => panic!("case {:?}: unexpected {got:?}", case.name),
        }
    }
}

#[test]
fn defaults_match_etcd() {
    let config = Config::default();
    assert_eq!(config.name, "default");
    assert_eq!(config.data_dir, PathBuf::from("default.cairn"));
    assert_eq!(config.listen_client_urls, urls(&["http://127.0.0.1:2379"]));
    assert_eq!(
        config.advertise_client_urls,
        urls(&["http://127.0.0.1:2379"])
    );
    assert_eq!(config.listen_peer_urls, urls(&["http://localhost:2380"]));
    assert_eq!(
        config.initial_advertise_peer_urls,
        urls(&["http://localhost:2380"])
    );
    assert_eq!(
        config.initial_cluster,
        members(&[("default", "http://localhost:2380")])
    );
    assert_eq!(config.initial_cluster_state, ClusterState::New);
    assert_eq!(config.initial_cluster_token, "etcd-cluster");
    assert_eq!(config.heartbeat_interval, Duration::from_millis(100));
    assert_eq!(config.election_timeout, Duration::from_millis(1000));
    assert_eq!(config.quota_backend_bytes, 2 << 30);
    assert_eq!(config.max_request_bytes, 1_572_864);
    assert_eq!(config.max_txn_ops, 128);
    assert_eq!(config.snapshot_count, 10_000);
    assert_eq!(config.snapshot_catchup_entries, 5_000);
    assert_eq!(config.auto_compaction, None);
    assert_eq!(config.log_level, "info");
    assert_eq!(config.validate(), Ok(()));
    assert_eq!(config.warnings(), Vec::<String>::new());
}

#[test]
fn each_flag() {
    check(&[
        Case {
            name: "no flags at all",
            args: &[],
            env: &[],
            file: None,
            expect: Is(|_| {}),
        },
        Case {
            name: "--name moves the data dir and the default initial cluster",
            args: &["--name", "infra0"],
            env: &[],
            file: None,
            expect: Is(|c| {
                c.name = "infra0".into();
                c.data_dir = "infra0.cairn".into();
                c.initial_cluster = members(&[("infra0", "http://localhost:2380")]);
            }),
        },
        Case {
            name: "--data-dir",
            args: &["--data-dir", "/var/lib/cairn"],
            env: &[],
            file: None,
            expect: Is(|c| c.data_dir = "/var/lib/cairn".into()),
        },
        Case {
            name: "an empty --data-dir is ${name}.cairn, as in etcd",
            args: &["--name", "n1", "--data-dir", ""],
            env: &[],
            file: None,
            expect: Is(|c| {
                c.name = "n1".into();
                c.data_dir = "n1.cairn".into();
                c.initial_cluster = members(&[("n1", "http://localhost:2380")]);
            }),
        },
        Case {
            name: "client URL lists",
            args: &[
                "--listen-client-urls",
                "http://127.0.0.1:12379, http://[::1]:12379",
                "--advertise-client-urls",
                "http://10.0.0.1:12379,https://node1.example.com:12379",
            ],
            env: &[],
            file: None,
            expect: Is(|c| {
                c.listen_client_urls = urls(&["http://127.0.0.1:12379", "http://[::1]:12379"]);
                c.advertise_client_urls =
                    urls(&["http://10.0.0.1:12379", "https://node1.example.com:12379"]);
            }),
        },
        Case {
            name: "--advertise-client-urls alone",
            args: &["--advertise-client-urls", "http://10.0.0.1:2379"],
            env: &[],
            file: None,
            expect: Is(|c| c.advertise_client_urls = urls(&["http://10.0.0.1:2379"])),
        },
        Case {
            name: "--listen-peer-urls on every interface",
            args: &["--listen-peer-urls", "http://0.0.0.0:12380"],
            env: &[],
            file: None,
            expect: Is(|c| c.listen_peer_urls = urls(&["http://0.0.0.0:12380"])),
        },
        Case {
            name: "--initial-advertise-peer-urls moves the default initial cluster",
            args: &[
                "--name",
                "n1",
                "--initial-advertise-peer-urls",
                "http://10.0.0.1:2380",
            ],
            env: &[],
            file: None,
            expect: Is(|c| {
                c.name = "n1".into();
                c.data_dir = "n1.cairn".into();
                c.initial_advertise_peer_urls = urls(&["http://10.0.0.1:2380"]);
                c.initial_cluster = members(&[("n1", "http://10.0.0.1:2380")]);
            }),
        },
        Case {
            name: "--initial-cluster with three members",
            args: &[
                "--name",
                "b",
                "--initial-advertise-peer-urls",
                "http://10.0.0.2:2380",
                "--initial-cluster",
                "a=http://10.0.0.1:2380,b=http://10.0.0.2:2380,c=http://10.0.0.3:2380",
            ],
            env: &[],
            file: None,
            expect: Is(|c| {
                c.name = "b".into();
                c.data_dir = "b.cairn".into();
                c.initial_advertise_peer_urls = urls(&["http://10.0.0.2:2380"]);
                c.initial_cluster = members(&[
                    ("a", "http://10.0.0.1:2380"),
                    ("b", "http://10.0.0.2:2380"),
                    ("c", "http://10.0.0.3:2380"),
                ]);
            }),
        },
        Case {
            name: "--initial-cluster with a member that has two peer URLs",
            args: &[
                "--name",
                "a",
                "--initial-advertise-peer-urls",
                "http://10.0.1.1:2380,http://10.0.0.1:2380",
                "--initial-cluster",
                "a=http://10.0.0.1:2380,b=http://10.0.0.2:2380,a=http://10.0.1.1:2380",
            ],
            env: &[],
            file: None,
            expect: Is(|c| {
                c.name = "a".into();
                c.data_dir = "a.cairn".into();
                c.initial_advertise_peer_urls =
                    urls(&["http://10.0.1.1:2380", "http://10.0.0.1:2380"]);
                c.initial_cluster = members(&[
                    ("a", "http://10.0.0.1:2380"),
                    ("b", "http://10.0.0.2:2380"),
                    ("a", "http://10.0.1.1:2380"),
                ]);
            }),
        },
        Case {
            name: "--initial-cluster-state existing",
            args: &[
                "--initial-cluster-state",
                "existing",
                "--initial-cluster",
                "default=http://localhost:2380,other=http://10.0.0.2:2380",
            ],
            env: &[],
            file: None,
            expect: Is(|c| {
                c.initial_cluster_state = ClusterState::Existing;
                c.initial_cluster = members(&[
                    ("default", "http://localhost:2380"),
                    ("other", "http://10.0.0.2:2380"),
                ]);
            }),
        },
        Case {
            name: "--initial-cluster-token",
            args: &["--initial-cluster-token", "etcd-cluster-1"],
            env: &[],
            file: None,
            expect: Is(|c| c.initial_cluster_token = "etcd-cluster-1".into()),
        },
        Case {
            name: "--heartbeat-interval and --election-timeout",
            args: &["--heartbeat-interval", "250", "--election-timeout", "2500"],
            env: &[],
            file: None,
            expect: Is(|c| {
                c.heartbeat_interval = Duration::from_millis(250);
                c.election_timeout = Duration::from_millis(2500);
            }),
        },
        Case {
            name: "--quota-backend-bytes",
            args: &["--quota-backend-bytes", "4294967296"],
            env: &[],
            file: None,
            expect: Is(|c| c.quota_backend_bytes = 4 << 30),
        },
        Case {
            name: "--quota-backend-bytes 0 means the default",
            args: &["--quota-backend-bytes", "0"],
            env: &[],
            file: None,
            expect: Is(|_| {}),
        },
        Case {
            name: "--max-request-bytes",
            args: &["--max-request-bytes", "10485760"],
            env: &[],
            file: None,
            expect: Is(|c| c.max_request_bytes = 10 << 20),
        },
        Case {
            name: "--max-txn-ops",
            args: &["--max-txn-ops", "1024"],
            env: &[],
            file: None,
            expect: Is(|c| c.max_txn_ops = 1024),
        },
        Case {
            name: "--snapshot-count",
            args: &["--snapshot-count", "10000"],
            env: &[],
            file: None,
            expect: Is(|c| c.snapshot_count = 10_000),
        },
        Case {
            name: "--auth-token simple",
            args: &["--auth-token", "simple"],
            env: &[],
            file: None,
            expect: Is(|c| c.auth_token = crate::auth::TokenConfig::Simple),
        },
        Case {
            name: "--auth-token-ttl",
            args: &["--auth-token-ttl", "60"],
            env: &[],
            file: None,
            expect: Is(|c| c.auth_token_ttl = Duration::from_secs(60)),
        },
        Case {
            name: "--bcrypt-cost",
            args: &["--bcrypt-cost", "4"],
            env: &[],
            file: None,
            expect: Is(|c| c.bcrypt_cost = 4),
        },
        Case {
            name: "--bcrypt-cost below bcrypt's minimum",
            args: &["--bcrypt-cost", "3"],
            env: &[],
            file: None,
            expect: Fails {
                flag: Some("bcrypt-cost"),
                text: "3 is outside bcrypt's 4 to 31",
            },
        },
        Case {
            name: "--auth-token jwt",
            args: &[
                "--auth-token",
                "jwt,pub-key=a.pub,priv-key=a,sign-method=ES256,ttl=1m",
            ],
            env: &[],
            file: None,
            expect: Is(|c| {
                c.auth_token = crate::auth::TokenConfig::Jwt(crate::auth::jwt::JwtConfig {
                    sign_method: "ES256".into(),
                    pub_key: "a.pub".into(),
                    priv_key: Some("a".into()),
                    ttl: Duration::from_secs(60),
                })
            }),
        },
        Case {
            name: "--auth-token jwt without a sign method",
            args: &["--auth-token", "jwt,pub-key=a.pub"],
            env: &[],
            file: None,
            expect: Fails {
                flag: Some("auth-token"),
                text: "jwt needs sign-method",
            },
        },
        Case {
            name: "--watch-progress-notify-interval",
            args: &["--watch-progress-notify-interval", "1.5s"],
            env: &[],
            file: None,
            expect: Is(|c| c.watch_progress_notify_interval = Duration::from_millis(1500)),
        },
        Case {
            name: "--log-level",
            args: &["--log-level", "debug"],
            env: &[],
            file: None,
            expect: Is(|c| c.log_level = "debug".into()),
        },
        Case {
            name: "etcd's fatal level logs as error",
            args: &["--log-level", "fatal"],
            env: &[],
            file: None,
            expect: Is(|c| c.log_level = "error".into()),
        },
        Case {
            name: "--listen-metrics-urls",
            args: &[
                "--listen-metrics-urls",
                "http://127.0.0.1:2381,http://[::1]:2381",
            ],
            env: &[],
            file: None,
            expect: Is(|c| {
                c.listen_metrics_urls = urls(&["http://127.0.0.1:2381", "http://[::1]:2381"])
            }),
        },
        Case {
            name: "--metrics extensive",
            args: &["--metrics", "extensive"],
            env: &[],
            file: None,
            expect: Is(|c| c.metrics = "extensive".into()),
        },
        Case {
            name: "--metrics takes basic or extensive only",
            args: &["--metrics", "all"],
            env: &[],
            file: None,
            expect: Fails {
                flag: Some("metrics"),
                text: "basic or extensive",
            },
        },
    ]);
}

#[test]
fn flag_syntax_follows_go_flag_package() {
    check(&[
        Case {
            name: "--flag=value",
            args: &[
                "--name=n1",
                "--heartbeat-interval=50",
                "--election-timeout=500",
                "--initial-cluster=n1=http://localhost:2380",
            ],
            env: &[],
            file: None,
            expect: Is(|c| {
                c.name = "n1".into();
                c.data_dir = "n1.cairn".into();
                c.heartbeat_interval = Duration::from_millis(50);
                c.election_timeout = Duration::from_millis(500);
                c.initial_cluster = members(&[("n1", "http://localhost:2380")]);
            }),
        },
        Case {
            name: "single-dash long flags, as in older etcd units",
            args: &["-name", "n1", "-data-dir=/d", "-snapshot-count", "5"],
            env: &[],
            file: None,
            expect: Is(|c| {
                c.name = "n1".into();
                c.data_dir = "/d".into();
                c.snapshot_count = 5;
                c.initial_cluster = members(&[("n1", "http://localhost:2380")]);
            }),
        },
        Case {
            name: "a repeated flag keeps its last value",
            args: &["--max-txn-ops", "1", "--max-txn-ops", "2"],
            env: &[],
            file: None,
            expect: Is(|c| c.max_txn_ops = 2),
        },
        Case {
            name: "the word after a flag is its value, even if it starts with a dash",
            args: &["--initial-cluster-token", "-name"],
            env: &[],
            file: None,
            expect: Is(|c| c.initial_cluster_token = "-name".into()),
        },
    ]);
}

#[test]
fn layers_override_in_order() {
    check(&[
        Case {
            name: "file over defaults, with lists as arrays and as strings",
            args: &[],
            env: &[],
            file: Some(
                r#"
                name = "from-file"
                data_dir = "/srv/cairn"
                listen_client_urls = ["http://127.0.0.1:1", "http://127.0.0.1:2"]
                advertise_client_urls = "http://10.0.0.1:1,http://10.0.0.1:2"
                heartbeat_interval = 50
                election_timeout = "500"
                initial_cluster = ["from-file=http://localhost:2380", "b=http://10.0.0.2:2380"]
                "#,
            ),
            expect: Is(|c| {
                c.name = "from-file".into();
                c.data_dir = "/srv/cairn".into();
                c.listen_client_urls = urls(&["http://127.0.0.1:1", "http://127.0.0.1:2"]);
                c.advertise_client_urls = urls(&["http://10.0.0.1:1", "http://10.0.0.1:2"]);
                c.heartbeat_interval = Duration::from_millis(50);
                c.election_timeout = Duration::from_millis(500);
                c.initial_cluster = members(&[
                    ("from-file", "http://localhost:2380"),
                    ("b", "http://10.0.0.2:2380"),
                ]);
            }),
        },
        Case {
            name: "env over file",
            args: &[],
            env: &[("CAIRN_NAME", "from-env"), ("CAIRN_MAX_TXN_OPS", "7")],
            file: Some("name = \"from-file\"\nmax_txn_ops = 3\nsnapshot_count = 9\n"),
            expect: Is(|c| {
                c.name = "from-env".into();
                c.data_dir = "from-env.cairn".into();
                c.initial_cluster = members(&[("from-env", "http://localhost:2380")]);
                c.max_txn_ops = 7;
                c.snapshot_count = 9;
            }),
        },
        Case {
            name: "flag over env over file",
            args: &["--name", "from-flag"],
            env: &[("CAIRN_NAME", "from-env"), ("CAIRN_LOG_LEVEL", "warn")],
            file: Some("name = \"from-file\"\nlog_level = \"debug\"\nmax_txn_ops = 3\n"),
            expect: Is(|c| {
                c.name = "from-flag".into();
                c.data_dir = "from-flag.cairn".into();
                c.initial_cluster = members(&[("from-flag", "http://localhost:2380")]);
                c.log_level = "warn".into();
                c.max_txn_ops = 3;
            }),
        },
        Case {
            name: "env comma lists and every kind of env value",
            args: &[],
            env: &[
                (
                    "CAIRN_LISTEN_CLIENT_URLS",
                    "http://127.0.0.1:1,http://127.0.0.1:2",
                ),
                ("CAIRN_ADVERTISE_CLIENT_URLS", "http://10.0.0.1:1"),
                ("CAIRN_DATA_DIR", "/data"),
                ("CAIRN_QUOTA_BACKEND_BYTES", "1073741824"),
                ("CAIRN_AUTO_COMPACTION_RETENTION", "2h"),
                ("PATH", "/usr/bin"),
            ],
            file: None,
            expect: Is(|c| {
                c.listen_client_urls = urls(&["http://127.0.0.1:1", "http://127.0.0.1:2"]);
                c.advertise_client_urls = urls(&["http://10.0.0.1:1"]);
                c.data_dir = "/data".into();
                c.quota_backend_bytes = 1 << 30;
                c.auto_compaction = Some(AutoCompaction::Periodic(Duration::from_secs(7200)));
            }),
        },
        Case {
            name: "an empty variable is unset (systemd EnvironmentFile lines)",
            args: &[],
            env: &[("CAIRN_NAME", ""), ("CAIRN_INITIAL_CLUSTER", "")],
            file: None,
            expect: Is(|_| {}),
        },
        Case {
            name: "the data dir follows a name set in another layer",
            args: &["--name", "n2"],
            env: &[],
            file: Some("initial_cluster_token = \"t\"\n"),
            expect: Is(|c| {
                c.name = "n2".into();
                c.data_dir = "n2.cairn".into();
                c.initial_cluster = members(&[("n2", "http://localhost:2380")]);
                c.initial_cluster_token = "t".into();
            }),
        },
        Case {
            name: "an explicit data dir wins over ${name}.cairn",
            args: &["--name", "n2"],
            env: &[("CAIRN_DATA_DIR", "/explicit")],
            file: None,
            expect: Is(|c| {
                c.name = "n2".into();
                c.data_dir = "/explicit".into();
                c.initial_cluster = members(&[("n2", "http://localhost:2380")]);
            }),
        },
    ]);
}

#[test]
fn auto_compaction_modes_and_formats() {
    fn periodic(secs: u64) -> Option<AutoCompaction> {
        Some(AutoCompaction::Periodic(Duration::from_secs(secs)))
    }
    check(&[
        Case {
            name: "retention 0 is off",
            args: &["--auto-compaction-retention", "0"],
            env: &[],
            file: None,
            expect: Is(|c| c.auto_compaction = None),
        },
        Case {
            name: "periodic: a bare number is hours",
            args: &["--auto-compaction-retention", "5"],
            env: &[],
            file: None,
            expect: Is(|c| c.auto_compaction = periodic(5 * 3600)),
        },
        Case {
            name: "periodic: a duration",
            args: &[
                "--auto-compaction-mode",
                "periodic",
                "--auto-compaction-retention=30m",
            ],
            env: &[],
            file: None,
            expect: Is(|c| c.auto_compaction = periodic(1800)),
        },
        Case {
            name: "periodic: Go durations with fractions and several units",
            args: &["--auto-compaction-retention", "1.5h"],
            env: &[],
            file: None,
            expect: Is(|c| c.auto_compaction = periodic(5400)),
        },
        Case {
            name: "periodic: 0s is off too",
            args: &["--auto-compaction-retention", "0s"],
            env: &[],
            file: None,
            expect: Is(|c| c.auto_compaction = None),
        },
        Case {
            name: "revision: a number of revisions",
            args: &[
                "--auto-compaction-mode",
                "revision",
                "--auto-compaction-retention",
                "1000",
            ],
            env: &[],
            file: None,
            expect: Is(|c| c.auto_compaction = Some(AutoCompaction::Revision(1000))),
        },
        Case {
            name: "revision from the file, as a TOML integer",
            args: &[],
            env: &[],
            file: Some("auto_compaction_mode = \"revision\"\nauto_compaction_retention = 50\n"),
            expect: Is(|c| c.auto_compaction = Some(AutoCompaction::Revision(50))),
        },
        Case {
            name: "revision with retention 0 is off",
            args: &["--auto-compaction-mode", "revision"],
            env: &[],
            file: None,
            expect: Is(|c| c.auto_compaction = None),
        },
        Case {
            name: "revision mode does not take durations",
            args: &[
                "--auto-compaction-mode",
                "revision",
                "--auto-compaction-retention",
                "1h",
            ],
            env: &[],
            file: None,
            expect: Fails {
                flag: Some("auto-compaction-retention"),
                text: "number of revisions",
            },
        },
        Case {
            name: "unknown unit",
            args: &["--auto-compaction-retention", "1d"],
            env: &[],
            file: None,
            expect: Fails {
                flag: Some("auto-compaction-retention"),
                text: "unknown unit \"d\"",
            },
        },
        Case {
            name: "negative retention",
            args: &["--auto-compaction-retention", "-1"],
            env: &[],
            file: None,
            expect: Fails {
                flag: Some("auto-compaction-retention"),
                text: "must not be negative",
            },
        },
        Case {
            name: "unknown mode",
            args: &["--auto-compaction-mode", "daily"],
            env: &[],
            file: None,
            expect: Fails {
                flag: Some("auto-compaction-mode"),
                text: r#"must be "periodic" or "revision""#,
            },
        },
    ]);
}

#[test]
fn bad_values_name_their_flag_and_layer() {
    check(&[
        Case {
            name: "not a number",
            args: &["--heartbeat-interval", "fast"],
            env: &[],
            file: None,
            expect: Fails {
                flag: Some("heartbeat-interval"),
                text: r#"invalid --heartbeat-interval "fast": expected a whole number"#,
            },
        },
        Case {
            name: "from an environment variable",
            args: &[],
            env: &[("CAIRN_ELECTION_TIMEOUT", "1s")],
            file: None,
            expect: Fails {
                flag: Some("election-timeout"),
                text: r#"invalid --election-timeout "1s" (from CAIRN_ELECTION_TIMEOUT)"#,
            },
        },
        Case {
            name: "from the file",
            args: &[],
            env: &[],
            file: Some("max_txn_ops = -3\n"),
            expect: Fails {
                flag: Some("max-txn-ops"),
                text: "(from max_txn_ops in ",
            },
        },
        Case {
            name: "a list where one value is expected",
            args: &[],
            env: &[],
            file: Some("name = [\"a\", \"b\"]\n"),
            expect: Fails {
                flag: Some("name"),
                text: "not a list",
            },
        },
        Case {
            name: "a table where a value is expected",
            args: &[],
            env: &[],
            file: Some("[initial_cluster]\na = \"http://10.0.0.1:2380\"\n"),
            expect: Fails {
                flag: Some("initial-cluster"),
                text: "expected a string, a number or a list",
            },
        },
        Case {
            name: "zero heartbeat",
            args: &["--heartbeat-interval", "0"],
            env: &[],
            file: None,
            expect: Fails {
                flag: Some("heartbeat-interval"),
                text: "greater than 0",
            },
        },
        Case {
            name: "negative quota",
            args: &["--quota-backend-bytes", "-1"],
            env: &[],
            file: None,
            expect: Fails {
                flag: Some("quota-backend-bytes"),
                text: "must not be negative",
            },
        },
        Case {
            name: "zero max-txn-ops",
            args: &["--max-txn-ops", "0"],
            env: &[],
            file: None,
            expect: Fails {
                flag: Some("max-txn-ops"),
                text: "greater than 0",
            },
        },
        Case {
            name: "zero max-request-bytes",
            args: &["--max-request-bytes=0"],
            env: &[],
            file: None,
            expect: Fails {
                flag: Some("max-request-bytes"),
                text: "greater than 0",
            },
        },
        Case {
            name: "zero snapshot-count",
            args: &["--snapshot-count", "0"],
            env: &[],
            file: None,
            expect: Fails {
                flag: Some("snapshot-count"),
                text: "greater than 0",
            },
        },
        Case {
            name: "unknown log level",
            args: &["--log-level", "verbose"],
            env: &[],
            file: None,
            expect: Fails {
                flag: Some("log-level"),
                text: "debug, info, warn, error",
            },
        },
        Case {
            name: "unknown cluster state",
            args: &["--initial-cluster-state", "old"],
            env: &[],
            file: None,
            expect: Fails {
                flag: Some("initial-cluster-state"),
                text: r#"must be "new" or "existing""#,
            },
        },
        Case {
            name: "empty name",
            args: &["--name", ""],
            env: &[],
            file: None,
            expect: Fails {
                flag: Some("name"),
                text: "must not be empty",
            },
        },
        Case {
            name: "URL with another scheme",
            args: &["--listen-peer-urls", "unix://127.0.0.1:2380"],
            env: &[],
            file: None,
            expect: Fails {
                flag: Some("listen-peer-urls"),
                text: "scheme must be http or https",
            },
        },
        Case {
            name: "URL without a port",
            args: &["--initial-advertise-peer-urls", "http://10.0.0.1"],
            env: &[],
            file: None,
            expect: Fails {
                flag: Some("initial-advertise-peer-urls"),
                text: "host:port",
            },
        },
        Case {
            name: "URL with a path",
            args: &["--advertise-client-urls", "http://10.0.0.1:2379/v3"],
            env: &[],
            file: None,
            expect: Fails {
                flag: Some("advertise-client-urls"),
                text: "must not contain a path",
            },
        },
        Case {
            name: "not a URL",
            args: &["--advertise-client-urls", "10.0.0.1:2379"],
            env: &[],
            file: None,
            expect: Fails {
                flag: Some("advertise-client-urls"),
                text: "host:port",
            },
        },
        Case {
            name: "an empty URL list",
            args: &["--listen-peer-urls", " , "],
            env: &[],
            file: None,
            expect: Fails {
                flag: Some("listen-peer-urls"),
                text: "at least one URL",
            },
        },
        Case {
            name: "initial-cluster entry without =",
            args: &["--initial-cluster", "default"],
            env: &[],
            file: None,
            expect: Fails {
                flag: Some("initial-cluster"),
                text: "is not a name=url pair",
            },
        },
        Case {
            name: "initial-cluster entry without a name",
            args: &["--initial-cluster", "=http://localhost:2380"],
            env: &[],
            file: None,
            expect: Fails {
                flag: Some("initial-cluster"),
                text: "empty member name",
            },
        },
    ]);
}

#[test]
fn cross_field_rules_name_their_flag() {
    check(&[
        Case {
            name: "election timeout below 5 heartbeats",
            args: &["--election-timeout", "200"],
            env: &[],
            file: None,
            expect: Fails {
                flag: Some("election-timeout"),
                text: "invalid --election-timeout: must be at least 5 × --heartbeat-interval \
                       (got 200 ms and 100 ms)",
            },
        },
        Case {
            name: "election timeout above 50 s",
            args: &["--election-timeout", "50001"],
            env: &[],
            file: None,
            expect: Fails {
                flag: Some("election-timeout"),
                text: "at most 50000 ms (got 50001 ms)",
            },
        },
        Case {
            name: "listen-client-urls without advertise-client-urls",
            args: &["--listen-client-urls", "http://127.0.0.1:12379"],
            env: &[],
            file: None,
            expect: Fails {
                flag: Some("advertise-client-urls"),
                text: "required when --listen-client-urls is set",
            },
        },
        Case {
            name: "listening on a DNS name",
            args: &["--listen-peer-urls", "http://node1.example.com:2380"],
            env: &[],
            file: None,
            expect: Fails {
                flag: Some("listen-peer-urls"),
                text: "must name an IP address or localhost",
            },
        },
        Case {
            name: "this member missing from initial-cluster",
            args: &["--name", "a", "--initial-cluster", "b=http://10.0.0.2:2380"],
            env: &[],
            file: None,
            expect: Fails {
                flag: Some("initial-cluster"),
                text: "this member (a) is not listed; add a=http://localhost:2380",
            },
        },
        Case {
            name: "initial-cluster disagrees with the advertised peer URLs",
            args: &[
                "--name",
                "a",
                "--initial-advertise-peer-urls",
                "http://10.0.0.1:2380",
                "--initial-cluster",
                "a=http://10.0.0.9:2380,b=http://10.0.0.2:2380",
            ],
            env: &[],
            file: None,
            expect: Fails {
                flag: Some("initial-cluster"),
                text: "lists a with http://10.0.0.9:2380 but --initial-advertise-peer-urls is \
                       http://10.0.0.1:2380",
            },
        },
        Case {
            name: "one of two advertised peer URLs missing",
            args: &[
                "--name",
                "a",
                "--initial-advertise-peer-urls",
                "http://10.0.0.1:2380,http://10.0.1.1:2380",
                "--initial-cluster",
                "a=http://10.0.0.1:2380",
            ],
            env: &[],
            file: None,
            expect: Fails {
                flag: Some("initial-cluster"),
                text: "lists a with http://10.0.0.1:2380 but",
            },
        },
        Case {
            name: "one peer URL under two names",
            args: &[
                "--initial-cluster",
                "default=http://localhost:2380,b=http://localhost:2380",
            ],
            env: &[],
            file: None,
            expect: Fails {
                flag: Some("initial-cluster"),
                text: "listed twice (for default and b)",
            },
        },
        Case {
            name: "joining an existing cluster needs its members",
            args: &["--initial-cluster-state", "existing"],
            env: &[],
            file: None,
            expect: Fails {
                flag: Some("initial-cluster"),
                text: "must also list the running members",
            },
        },
    ]);
}

#[test]
fn command_line_and_file_mistakes() {
    check(&[
        Case {
            name: "unknown flag",
            args: &["--nmae", "x"],
            env: &[],
            file: None,
            expect: Fails {
                flag: None,
                text: "--nmae",
            },
        },
        Case {
            name: "flag without its value",
            args: &["--name"],
            env: &[],
            file: None,
            expect: Fails {
                flag: None,
                text: "--name",
            },
        },
        Case {
            name: "stray argument",
            args: &["start"],
            env: &[],
            file: None,
            expect: Fails {
                flag: None,
                text: "'start'",
            },
        },
        Case {
            name: "etcd's kebab-case key in the file",
            args: &[],
            env: &[],
            file: Some("data-dir = \"/x\"\n"),
            expect: Fails {
                flag: Some("config-file"),
                text: "unknown key `data-dir` in --config-file",
            },
        },
        Case {
            name: "a config file naming another",
            args: &[],
            env: &[],
            file: Some("config_file = \"/other.toml\"\n"),
            expect: Fails {
                flag: Some("config-file"),
                text: "cannot name another one",
            },
        },
        Case {
            name: "not TOML",
            args: &[],
            env: &[],
            file: Some("name = \"a\"\nsnapshot_count = \n"),
            expect: Fails {
                flag: Some("config-file"),
                text: "TOML parse error at line 2, column 18: string values must be quoted",
            },
        },
        Case {
            name: "missing file",
            args: &["--config-file", "/nonexistent/cairn.toml"],
            env: &[],
            file: None,
            expect: Fails {
                flag: Some("config-file"),
                text: "cannot load --config-file /nonexistent/cairn.toml",
            },
        },
    ]);
}

/// The hint for a misspelt key names the right one.
#[test]
fn unknown_file_keys_get_a_suggestion() {
    let case = Case {
        name: "kebab-case key",
        args: &[],
        env: &[],
        file: Some("quota-backend-bytes = 1\n"),
        expect: Fails {
            flag: Some("config-file"),
            text: "",
        },
    };
    let err = load(&case).expect_err("unknown key");
    assert!(
        err.to_string()
            .ends_with("did you mean `quota_backend_bytes`?"),
        "{err}"
    );
}

fn sample_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/cairn.toml")
}

#[test]
fn sample_file_holds_the_defaults() {
    let path = sample_path();
    let args = ["cairn", "--config-file", path.to_str().expect("utf-8 path")];
    let (config, warnings) =
        Config::load_with_warnings(args, std::iter::empty()).expect("sample loads");
    assert_eq!(config, Config::default());
    assert_eq!(warnings, Vec::<String>::new());
}

#[test]
fn sample_file_shows_every_option() {
    let table = config::Config::builder()
        .add_source(config::File::from(sample_path().as_path()).format(config::FileFormat::Toml))
        .build()
        .and_then(|c| c.collect())
        .expect("sample parses");
    let mut shown: Vec<&str> = table.keys().map(String::as_str).collect();
    shown.sort();
    let mut options: Vec<&str> = OPTIONS
        .iter()
        .map(|o| o.key)
        .filter(|&key| key != CONFIG_FILE)
        .collect();
    options.sort();
    assert_eq!(shown, options);
}

#[test]
fn sample_file_defaults_follow_the_name() {
    let path = sample_path();
    let args = ["cairn", "--config-file", path.to_str().expect("utf-8 path")];
    let env = [("CAIRN_NAME".to_string(), "n1".to_string())];
    let config = Config::load(args, env).expect("sample loads");
    assert_eq!(config.data_dir, PathBuf::from("n1.cairn"));
    assert_eq!(
        config.initial_cluster,
        members(&[("n1", "http://localhost:2380")])
    );
}

#[test]
fn config_file_can_come_from_the_environment() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "snapshot_count = 42\n").expect("write");
    let env = [("CAIRN_CONFIG_FILE".to_string(), path.display().to_string())];
    let config = Config::load(["cairn"], env).expect("loads");
    assert_eq!(config.snapshot_count, 42);
}

#[test]
fn help_and_version_exit_zero() {
    for args in [
        &["cairn", "--help"][..],
        &["cairn", "-h"],
        &["cairn", "-help"],
    ] {
        let err = Config::load(args.iter().copied(), std::iter::empty()).expect_err("help");
        assert_eq!(err.exit_code(), 0, "{args:?}");
        let ConfigError::Help(text) = err else {
            panic!("{args:?}: not help: {err:?}");
        };
        for o in OPTIONS {
            assert!(
                text.contains(&format!("--{}", o.flag)),
                "help lacks --{}",
                o.flag
            );
        }
        assert!(text.contains("CAIRN_DATA_DIR"), "{text}");
    }
    for args in [&["cairn", "--version"][..], &["cairn", "-version"]] {
        let err = Config::load(args.iter().copied(), std::iter::empty()).expect_err("version");
        assert_eq!(err.exit_code(), 0);
        assert_eq!(
            err.to_string().lines().next(),
            Some(concat!("cairn Version: ", env!("CARGO_PKG_VERSION")))
        );
    }
    let usage = Config::load(["cairn", "--bogus"], std::iter::empty()).expect_err("usage");
    assert_eq!(usage.exit_code(), 2);
    let invalid = Config::load(["cairn", "--max-txn-ops=0"], std::iter::empty()).expect_err("bad");
    assert_eq!(invalid.exit_code(), 1);
}

#[test]
fn warnings_are_returned_not_printed() {
    let env = [
        ("CAIRN_DATADIR".to_string(), "/typo".to_string()),
        ("CAIRN_NAME".to_string(), "env".to_string()),
    ];
    let args = [
        "cairn",
        "--name",
        "flag",
        "--quota-backend-bytes",
        "10737418240",
    ];
    let (config, warnings) = Config::load_with_warnings(args, env).expect("loads");
    assert_eq!(config.quota_backend_bytes, 10 << 30);
    assert_eq!(config.warnings().len(), 1);
    assert!(config.warnings()[0].contains("--quota-backend-bytes 10737418240 exceeds"));
    let expected = [
        "CAIRN_NAME is shadowed by --name",
        "unknown environment variable CAIRN_DATADIR ignored",
        "--quota-backend-bytes 10737418240 exceeds",
    ];
    assert_eq!(warnings.len(), expected.len(), "{warnings:?}");
    for want in expected {
        assert!(
            warnings.iter().any(|w| w.contains(want)),
            "{want:?} not in {warnings:?}"
        );
    }

    let big_requests = Config {
        max_request_bytes: 20 << 20,
        ..Config::default()
    };
    assert_eq!(big_requests.warnings().len(), 1);
    assert!(big_requests.warnings()[0].contains("--max-request-bytes"));
}

#[test]
fn min_lease_ttl_is_one_and_a_half_election_timeouts() {
    struct Ttl {
        heartbeat_ms: u64,
        election_ms: u64,
        ticks: usize,
        ttl: i64,
    }
    let cases = [
        Ttl {
            heartbeat_ms: 100,
            election_ms: 1000,
            ticks: 10,
            ttl: 2,
        },
        Ttl {
            heartbeat_ms: 100,
            election_ms: 2000,
            ticks: 20,
            ttl: 3,
        },
        Ttl {
            heartbeat_ms: 100,
            election_ms: 3000,
            ticks: 30,
            ttl: 5,
        },
        Ttl {
            heartbeat_ms: 500,
            election_ms: 5000,
            ticks: 10,
            ttl: 8,
        },
        // etcd counts whole ticks: 2050 ms is 20 ticks, 30 × 100 ms = 3 s.
        Ttl {
            heartbeat_ms: 100,
            election_ms: 2050,
            ticks: 20,
            ttl: 3,
        },
        Ttl {
            heartbeat_ms: 10,
            election_ms: 50,
            ticks: 5,
            ttl: 1,
        },
    ];
    for case in cases {
        let config = Config {
            heartbeat_interval: Duration::from_millis(case.heartbeat_ms),
            election_timeout: Duration::from_millis(case.election_ms),
            ..Config::default()
        };
        assert_eq!(
            config.election_ticks(),
            case.ticks,
            "{} ms",
            case.election_ms
        );
        assert_eq!(config.min_lease_ttl(), case.ttl, "{} ms", case.election_ms);
    }
}

/// `validate` on configs built in code (not through `load`) also names the
/// field at fault.
#[test]
fn validate_checks_hand_built_configs() {
    struct Bad {
        edit: fn(&mut Config),
        flag: &'static str,
        text: &'static str,
    }
    let cases = [
        Bad {
            edit: |c| c.log_level = "loud".into(),
            flag: "log-level",
            text: "\"loud\" is not one of",
        },
        Bad {
            edit: |c| c.auto_compaction = Some(AutoCompaction::Periodic(Duration::ZERO)),
            flag: "auto-compaction-retention",
            text: "longer than 0",
        },
        Bad {
            edit: |c| c.auto_compaction = Some(AutoCompaction::Revision(-5)),
            flag: "auto-compaction-retention",
            text: "got -5",
        },
        Bad {
            edit: |c| c.initial_cluster.clear(),
            flag: "initial-cluster",
            text: "must not be empty",
        },
        Bad {
            edit: |c| c.listen_client_urls = urls(&["http://example.com:2379"]),
            flag: "listen-client-urls",
            text: "IP address or localhost",
        },
        Bad {
            edit: |c| c.advertise_client_urls.clear(),
            flag: "advertise-client-urls",
            text: "at least one URL",
        },
        Bad {
            edit: |c| c.initial_advertise_peer_urls = urls(&["ftp://10.0.0.1:21"]),
            flag: "initial-advertise-peer-urls",
            text: "http or https",
        },
        Bad {
            edit: |c| c.heartbeat_interval = Duration::ZERO,
            flag: "heartbeat-interval",
            text: "greater than 0",
        },
        Bad {
            edit: |c| c.quota_backend_bytes = 0,
            flag: "quota-backend-bytes",
            text: "default",
        },
        Bad {
            edit: |c| c.data_dir = PathBuf::new(),
            flag: "data-dir",
            text: "must not be empty",
        },
        Bad {
            edit: |c| c.name.clear(),
            flag: "name",
            text: "must not be empty",
        },
        Bad {
            edit: |c| c.watch_progress_notify_interval = Duration::ZERO,
            flag: "watch-progress-notify-interval",
            text: "longer than 0",
        },
    ];
    for case in cases {
        let mut config = Config::default();
        (case.edit)(&mut config);
        let err = config.validate().expect_err(case.text);
        assert_eq!(err.flag(), Some(case.flag), "{err}");
        assert!(err.to_string().contains(case.text), "{err}");
    }
}

#[test]
fn option_names_agree_across_layers() {
    for o in OPTIONS {
        assert_eq!(o.flag, o.key.replace('_', "-"));
        assert_eq!(o.env_var(), format!("CAIRN_{}", o.key.to_uppercase()));
        assert!(!o.help.is_empty(), "{} has no help", o.flag);
    }
}

// ---- etcd drop-in: ETCD_* variables, etcd's YAML file, unimplemented flags ----

/// Loads with `args`, `env` and, if given, a config file named `file_name`.
fn load_etcd(
    args: &[&str],
    env: &[(&str, &str)],
    file: Option<(&str, &str)>,
) -> Result<(Config, Vec<String>), ConfigError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut all: Vec<String> = std::iter::once("cairn")
        .chain(args.iter().copied())
        .map(String::from)
        .collect();
    if let Some((name, contents)) = file {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).expect("write config file");
        all.push(format!("--config-file={}", path.display()));
    }
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    Config::load_with_warnings(all, env)
}

#[test]
fn etcd_variables_set_options_below_cairn_ones() {
    let env = [
        ("ETCD_NAME", "infra1"),
        ("ETCD_DATA_DIR", "/var/lib/etcd"),
        ("ETCD_LISTEN_CLIENT_URLS", "http://127.0.0.1:2379"),
        ("ETCD_ADVERTISE_CLIENT_URLS", "http://10.0.0.1:2379"),
        ("ETCD_INITIAL_ADVERTISE_PEER_URLS", "http://10.0.0.1:2380"),
        (
            "ETCD_INITIAL_CLUSTER",
            "infra1=http://10.0.0.1:2380,infra2=http://10.0.0.2:2380",
        ),
        ("ETCD_INITIAL_CLUSTER_STATE", "new"),
        ("ETCD_HEARTBEAT_INTERVAL", "200"),
        ("ETCD_ELECTION_TIMEOUT", "2000"),
        ("ETCD_DEBUG", "true"),
        ("ETCD_WAL_DIR", "/fast/wal"),
        // A graduated name (etcd 3.6) of an implemented 3.4 flag.
        ("ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL", "5s"),
        // Not etcd's: ETCDCTL_* belongs to the client.
        ("ETCDCTL_API", "3"),
    ];
    let (config, warnings) = load_etcd(&[], &env, None).expect("loads");
    assert_eq!(config.name, "infra1");
    assert_eq!(config.data_dir, PathBuf::from("/var/lib/etcd"));
    assert_eq!(
        config.advertise_client_urls,
        urls(&["http://10.0.0.1:2379"])
    );
    assert_eq!(
        config.initial_cluster,
        members(&[
            ("infra1", "http://10.0.0.1:2380"),
            ("infra2", "http://10.0.0.2:2380")
        ])
    );
    assert_eq!(config.heartbeat_interval, Duration::from_millis(200));
    assert_eq!(config.log_level, "debug");
    assert_eq!(config.wal_dir, Some(PathBuf::from("/fast/wal")));
    assert_eq!(
        config.watch_progress_notify_interval,
        Duration::from_secs(5)
    );
    assert_eq!(warnings, Vec::<String>::new());

    // CAIRN_* over ETCD_*, a flag over both; each shadowing is a warning.
    let env = [
        ("ETCD_NAME", "e"),
        ("CAIRN_NAME", "c"),
        ("ETCD_SNAPSHOT_COUNT", "5"),
        ("CAIRN_SNAPSHOT_COUNT", "6"),
        ("ETCD_MAX_TXN_OPS", "7"),
    ];
    let (config, warnings) = load_etcd(
        &["--snapshot-count", "8"],
        &env,
        Some(("c.toml", "max_txn_ops = 3\n")),
    )
    .expect("loads");
    assert_eq!(config.name, "c");
    assert_eq!(config.snapshot_count, 8);
    assert_eq!(config.max_txn_ops, 7, "ETCD_* over the file");
    for want in [
        "ETCD_NAME is shadowed by CAIRN_NAME",
        "CAIRN_SNAPSHOT_COUNT is shadowed by --snapshot-count",
        "ETCD_SNAPSHOT_COUNT is shadowed by --snapshot-count",
    ] {
        assert!(
            warnings.iter().any(|w| w == want),
            "{want:?} not in {warnings:?}"
        );
    }
}

#[test]
fn etcd_variable_mistakes_name_the_variable() {
    let err = load_etcd(&[], &[("ETCD_HEARTBEAT_INTERVAL", "fast")], None).expect_err("bad");
    assert_eq!(err.flag(), Some("heartbeat-interval"));
    assert!(
        err.to_string().contains("(from ETCD_HEARTBEAT_INTERVAL)"),
        "{err}"
    );
    let err = load_etcd(&[], &[("ETCD_ENABLE_V2", "maybe")], None).expect_err("bad bool");
    assert!(err.to_string().contains("ETCD_ENABLE_V2"), "{err}");
    let (_, warnings) = load_etcd(&[], &[("ETCD_NO_SUCH_THING", "1")], None).expect("loads");
    assert_eq!(
        warnings,
        ["unrecognized environment variable ETCD_NO_SUCH_THING ignored"]
    );
}

#[test]
fn unimplemented_etcd_flags_are_accepted_with_a_reason_or_refused() {
    struct Check {
        args: &'static [&'static str],
        /// The warning expected, or "" for none.
        warns: &'static str,
    }
    let quiet_or_warned = [
        // At etcd's defaults (or what cairn does anyway): silent.
        Check {
            args: &["--enable-v2=false", "--max-wals", "5", "--logger=zap"],
            warns: "",
        },
        Check {
            args: &[
                "--pre-vote",
                "--strict-reconfig-check",
                "--log-outputs=stderr",
            ],
            warns: "",
        },
        Check {
            args: &[
                "--force-new-cluster=false",
                "--proxy",
                "off",
                "--discovery=",
            ],
            warns: "",
        },
        // Otherwise one line each, naming the flag and why.
        Check {
            args: &["--enable-v2"],
            warns: "flag --enable-v2 accepted and ignored: cairn serves the v3 API only",
        },
        Check {
            args: &["-enable-v2=true"],
            warns: "flag --enable-v2 accepted and ignored",
        },
        // Implemented (src/corrupt.rs): no warning, under 3.4's and 3.6's names.
        Check {
            args: &[
                "--experimental-initial-corrupt-check=true",
                "--corrupt-check-time=5m",
            ],
            warns: "",
        },
        Check {
            args: &["--log-outputs", "/var/log/etcd.log"],
            warns: "flag --log-outputs accepted and ignored: cairn logs to stderr only",
        },
        Check {
            args: &["--proxy-dial-timeout", "3000"],
            warns: "flag --proxy-dial-timeout accepted and ignored",
        },
    ];
    for check in quiet_or_warned {
        let (_, warnings) = load_etcd(check.args, &[], None)
            .unwrap_or_else(|e| panic!("{:?} must load: {e}", check.args));
        match check.warns {
            "" => assert_eq!(warnings, Vec::<String>::new(), "{:?}", check.args),
            want => assert!(
                warnings.len() == 1 && warnings[0].starts_with(want),
                "{:?}: {warnings:?} lacks {want:?}",
                check.args
            ),
        }
    }
    // A switch never takes the next word as its value (Go's flag package).
    let (config, _) = load_etcd(&["--debug", "--name", "n"], &[], None).expect("loads");
    assert_eq!(
        (config.log_level.as_str(), config.name.as_str()),
        ("debug", "n")
    );

    // --force-new-cluster is implemented: a switch, also as a variable.
    let (config, _) = load_etcd(&["--force-new-cluster"], &[], None).expect("loads");
    assert!(config.force_new_cluster);
    let (config, _) = load_etcd(&[], &[("ETCD_FORCE_NEW_CLUSTER", "1")], None).expect("loads");
    assert!(config.force_new_cluster);

    // The corruption checks are implemented, under 3.4's and 3.6's names.
    let (config, _) = load_etcd(&["--initial-corrupt-check"], &[], None).expect("loads");
    assert!(config.initial_corrupt_check);
    assert_eq!(config.corrupt_check_time, std::time::Duration::ZERO);
    let (config, _) = load_etcd(
        &[],
        &[("ETCD_EXPERIMENTAL_CORRUPT_CHECK_TIME", "90s")],
        None,
    )
    .expect("loads");
    assert_eq!(
        config.corrupt_check_time,
        std::time::Duration::from_secs(90)
    );

    // The compactor's batches: etcd's defaults, the flags (and the graduated
    // name) take effect, 0 means the default as in etcd.
    let batches = |c: &Config| (c.compaction_batches.limit, c.compaction_batches.pause);
    let (config, _) = load_etcd(&[], &[], None).expect("loads");
    assert_eq!(
        batches(&config),
        (1_000, std::time::Duration::from_millis(10))
    );
    let (config, _) = load_etcd(
        &[
            "--experimental-compaction-batch-limit=200",
            "--experimental-compaction-sleep-interval",
            "1ms",
        ],
        &[],
        None,
    )
    .expect("loads");
    assert_eq!(batches(&config), (200, std::time::Duration::from_millis(1)));
    let (config, _) =
        load_etcd(&[], &[("ETCD_COMPACTION_BATCH_LIMIT", "50")], None).expect("loads");
    assert_eq!(config.compaction_batches.limit, 50);
    assert!(load_etcd(&["--compaction-batch-limit=-1"], &[], None).is_err());

    for (args, flag, text) in [
        (
            &["--discovery", "https://discovery.etcd.io/abc"][..],
            "discovery",
            "discovery bootstrap is not implemented",
        ),
        (&["--proxy=on"], "proxy", "cannot run as an etcd v2 proxy"),
    ] {
        let err = load_etcd(args, &[], None).expect_err("refused");
        assert_eq!(err.flag(), Some(flag), "{err}");
        assert!(err.to_string().contains(text), "{err}");
        assert_eq!(err.exit_code(), 1);
    }
    let err = load_etcd(&[], &[("ETCD_PROXY", "on")], None).expect_err("refused");
    assert!(err.to_string().contains("(from ETCD_PROXY)"), "{err}");
}

/// etcd's sample etcd.conf.yml, trimmed of the TLS and metrics keys other
/// features add, with values of every YAML type.
const ETCD_YAML: &str = r#"
# This is the configuration file for the etcd server.
name: 'yaml-member'
data-dir: /var/lib/etcd
wal-dir:
snapshot-count: 10000
heartbeat-interval: 100
election-timeout: 1000
quota-backend-bytes: 0
listen-peer-urls: http://localhost:2380
listen-client-urls: http://127.0.0.1:2379,http://127.0.0.1:22379
max-snapshots: 5
max-wals: 5
cors:
initial-advertise-peer-urls: http://localhost:2380
advertise-client-urls: http://127.0.0.1:2379
discovery:
discovery-fallback: 'proxy'
discovery-proxy:
discovery-srv:
initial-cluster:
initial-cluster-token: 'etcd-cluster'
initial-cluster-state: 'new'
strict-reconfig-check: false
enable-v2: true
proxy: 'off'
proxy-failure-wait: 5000
proxy-refresh-interval: 30000
proxy-dial-timeout: 1000
proxy-write-timeout: 5000
proxy-read-timeout: 0
client-transport-security:
  cert-file:
  key-file:
  client-cert-auth: false
  trusted-ca-file:
  auto-tls: false
peer-transport-security:
  cert-file:
  key-file:
  client-cert-auth: false
  trusted-ca-file:
  auto-tls: false
debug: false
logger: zap
log-outputs: [stderr]
force-new-cluster: false
auto-compaction-mode: periodic
auto-compaction-retention: "1"
some-future-key: 3
"#;

#[test]
fn etcd_yaml_config_file_loads() {
    for name in ["etcd.conf.yml", "etcd.conf"] {
        let (config, warnings) = load_etcd(&[], &[], Some((name, ETCD_YAML))).expect(name);
        assert_eq!(config.name, "yaml-member");
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/etcd"));
        assert_eq!(config.wal_dir, None);
        assert_eq!(config.snapshot_count, 10_000);
        assert_eq!(
            config.listen_client_urls,
            urls(&["http://127.0.0.1:2379", "http://127.0.0.1:22379"])
        );
        assert_eq!(
            config.auto_compaction,
            Some(AutoCompaction::Periodic(Duration::from_secs(3600)))
        );
        assert_eq!(
            config.initial_cluster,
            members(&[("yaml-member", "http://localhost:2380")])
        );
        let expected = [
            "flag --enable-v2 accepted and ignored: cairn serves the v3 API only",
            "flag --strict-reconfig-check accepted and ignored: cairn always checks",
            "unknown key `some-future-key` in --config-file ",
        ];
        assert_eq!(warnings.len(), expected.len(), "{name}: {warnings:?}");
        for want in expected {
            assert!(
                warnings.iter().any(|w| w.starts_with(want)),
                "{name}: {want:?} not in {warnings:?}"
            );
        }
    }
    // A bad value names the YAML key and the file.
    let err = load_etcd(&[], &[], Some(("e.yaml", "heartbeat-interval: soon\n"))).expect_err("bad");
    assert!(
        err.to_string().contains("(from heartbeat-interval in "),
        "{err}"
    );
    // TLS sections map to the TLS flags, checked as such.
    let tls = "client-transport-security:\n  cert-file: /etc/etcd/server.crt\n";
    let err = load_etcd(&[], &[], Some(("e.yml", tls))).expect_err("tls");
    assert!(err.to_string().contains("--key-file"), "{err}");
    // Flags and variables still layer over it (etcd would ignore them).
    let (config, _) = load_etcd(
        &["--name", "flag"],
        &[("ETCD_SNAPSHOT_COUNT", "7")],
        Some(("etcd.yml", "name: file\nsnapshot-count: 3\n")),
    )
    .expect("loads");
    assert_eq!((config.name.as_str(), config.snapshot_count), ("flag", 7));
    // TOML stays TOML.
    let (config, _) = load_etcd(&[], &[], Some(("cairn.conf", "name = \"toml\"\n"))).expect("toml");
    assert_eq!(config.name, "toml");
}

#[test]
fn every_option_has_etcd_names_and_a_reason() {
    for o in OPTIONS {
        let first = o.etcd_env_vars().next().expect("at least one");
        assert_eq!(first, format!("ETCD_{}", o.key.to_uppercase()));
        for alias in o.aliases {
            assert_eq!(
                options::by_name(alias).map(|a| a.key),
                Some(o.key),
                "{alias}"
            );
        }
        match o.support {
            options::Support::Implemented => {}
            options::Support::Ignored { agrees, reason }
            | options::Support::Refused { agrees, reason } => {
                assert!(!reason.is_empty() && !agrees.is_empty(), "{}", o.flag);
            }
        }
    }
}

#[test]
fn cors_and_enable_ui_are_read_as_etcd_reads_cors() {
    let (config, _) = load_etcd(&[], &[], None).expect("loads");
    assert_eq!(
        (config.cors, config.enable_ui),
        (vec!["*".to_string()], false)
    );
    let (config, _) = load_etcd(
        &[
            "--cors",
            "http://a.example:8080, https://b.example:443",
            "--enable-ui",
        ],
        &[],
        None,
    )
    .expect("loads");
    assert_eq!(
        config.cors,
        ["http://a.example:8080", "https://b.example:443"]
    );
    assert!(config.enable_ui);
    let (config, _) = load_etcd(&[], &[("ETCD_CORS", "")], None).expect("loads");
    assert!(
        config.cors.is_empty() || config.cors == ["*"],
        "empty: any origin"
    );
    let refused = load_etcd(&["--cors", "http://a.example"], &[], None);
    assert!(
        refused.err().is_some_and(|e| e
            .to_string()
            .contains("does not have the form \"host:port\"")),
        "etcd refuses an origin without a port"
    );
}

#[test]
fn backend_engine_is_a_flag_and_a_cairn_variable() {
    use crate::mvcc::Engine;
    let (config, _) = load_etcd(&[], &[], None).expect("loads");
    assert_eq!(
        config.backend_engine, None,
        "the data dir's engine, or fjall"
    );
    let (config, _) = load_etcd(&["--backend-engine", "sled"], &[], None).expect("loads");
    assert_eq!(config.backend_engine, Some(Engine::Sled));
    let (config, _) = load_etcd(&[], &[("CAIRN_BACKEND_ENGINE", "fjall")], None).expect("loads");
    assert_eq!(config.backend_engine, Some(Engine::Fjall));
    let refused = load_etcd(&["--backend-engine", "rocksdb"], &[], None);
    assert!(
        refused
            .err()
            .is_some_and(|e| e.to_string().contains("--backend-engine")),
        "an unknown engine is refused, naming the flag"
    );
}
