//! Parsers for single option values, in etcd's formats.
//!
//! Every layer (flag, `CAIRN_*` variable, config file) hands its value to the
//! same parser, so `--heartbeat-interval 100`, `CAIRN_HEARTBEAT_INTERVAL=100`
//! and `heartbeat_interval = 100` mean exactly the same thing. A parser returns
//! the reason as a plain `String`; the caller wraps it in a
//! [`ConfigError`](super::ConfigError) that names the flag and where the value
//! came from.

use std::time::Duration;

use url::{Host, Url};

use super::{AutoCompaction, ClusterState};

/// Which `--auto-compaction-mode` the retention is read in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CompactionMode {
    Periodic,
    Revision,
}

/// A whole number, as etcd's `uint` flags take it.
pub(super) fn unsigned(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if text.starts_with('-') {
        return Err("must not be negative".into());
    }
    text.parse::<u64>()
        .map_err(|_| "expected a whole number".to_string())
}

/// A boolean as Go's `strconv.ParseBool` reads it, which is what etcd's
/// switches (`--enable-v2=true`, `ETCD_ENABLE_V2=1`) go through.
pub(super) fn go_bool(text: &str) -> Result<bool, String> {
    match text.trim() {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

/// Milliseconds, as `--heartbeat-interval` and `--election-timeout` take them.
pub(super) fn millis(text: &str) -> Result<Duration, String> {
    let ms = unsigned(text).map_err(|e| format!("{e} of milliseconds"))?;
    if ms == 0 {
        return Err("must be greater than 0 ms".into());
    }
    Ok(Duration::from_millis(ms))
}

/// A count that must be at least 1 (`--max-txn-ops`, `--snapshot-count`, ...).
pub(super) fn positive(text: &str) -> Result<u64, String> {
    match unsigned(text)? {
        0 => Err("must be greater than 0".into()),
        n => Ok(n),
    }
}

/// `new` or `existing`, spelled exactly as etcd spells them.
pub(super) fn cluster_state(text: &str) -> Result<ClusterState, String> {
    match text.trim() {
        "new" => Ok(ClusterState::New),
        "existing" => Ok(ClusterState::Existing),
        _ => Err(r#"must be "new" or "existing""#.into()),
    }
}

/// `periodic` or `revision`.
pub(super) fn compaction_mode(text: &str) -> Result<CompactionMode, String> {
    match text.trim() {
        "periodic" => Ok(CompactionMode::Periodic),
        "revision" => Ok(CompactionMode::Revision),
        _ => Err(r#"must be "periodic" or "revision""#.into()),
    }
}

/// Log levels etcd accepts. etcd also takes zap's `dpanic`, `panic` and
/// `fatal`; cairn has no such levels and logs them as `error`, which is what
/// the second element says (`true` means "was mapped to `error`").
pub(super) fn log_level(text: &str) -> Result<(String, bool), String> {
    let level = text.trim().to_ascii_lowercase();
    match level.as_str() {
        "debug" | "info" | "warn" | "error" => Ok((level, false)),
        "dpanic" | "panic" | "fatal" => Ok(("error".into(), true)),
        _ => Err("must be one of debug, info, warn, error".into()),
    }
}

/// `--auto-compaction-retention` read in the given mode, as etcd 3.4 reads it:
/// `0` turns auto-compaction off; in periodic mode a bare number is hours and
/// anything else is a Go duration (`30m`, `1h30m`, `1.5h`); in revision mode it
/// is a number of revisions.
pub(super) fn retention(
    mode: CompactionMode,
    text: &str,
) -> Result<Option<AutoCompaction>, String> {
    let text = text.trim();
    match mode {
        CompactionMode::Periodic => {
            let period = if let Ok(hours) = text.parse::<u64>() {
                hours
                    .checked_mul(3600)
                    .map(Duration::from_secs)
                    .ok_or("too many hours")?
            } else {
                go_duration(text).map_err(|e| {
                    format!("{e}; periodic retention is a duration like 30m or 1h, or a number of hours")
                })?
            };
            Ok((!period.is_zero()).then_some(AutoCompaction::Periodic(period)))
        }
        CompactionMode::Revision => {
            let revisions = text.parse::<i64>().map_err(|_| {
                "revision retention is a number of revisions, like 1000".to_string()
            })?;
            match revisions {
                0 => Ok(None),
                n if n < 0 => Err("must not be negative".into()),
                n => Ok(Some(AutoCompaction::Revision(n))),
            }
        }
    }
}

/// A duration in Go's `time.ParseDuration` syntax (a sequence of decimal
/// numbers, each with an optional fraction and a unit among `ns`, `us`, `µs`,
/// `ms`, `s`, `m`, `h`), which is what etcd's scripts are written in. Negative
/// durations are refused: nothing in cairn's configuration can use one.
pub(super) fn go_duration(text: &str) -> Result<Duration, String> {
    let mut rest = text.trim();
    if rest.starts_with('-') {
        return Err("must not be negative".into());
    }
    rest = rest.strip_prefix('+').unwrap_or(rest);
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err("expected a duration".into());
    }
    let not_digit = |c: char| !c.is_ascii_digit();
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let (whole, after) = rest.split_at(rest.find(not_digit).unwrap_or(rest.len()));
        let (fraction, after) = match after.strip_prefix('.') {
            Some(f) => f.split_at(f.find(not_digit).unwrap_or(f.len())),
            None => ("", after),
        };
        if whole.is_empty() && fraction.is_empty() {
            return Err(format!("{text:?} is not a duration"));
        }
        let unit_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        let nanos_per_unit: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(format!("missing unit in duration {text:?}")),
            other => return Err(format!("unknown unit {other:?} in duration {text:?}")),
        };
        let too_long = || format!("duration {text:?} is too long");
        let mut nanos: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse::<u128>().map_err(|_| too_long())?
        };
        nanos = nanos.checked_mul(nanos_per_unit).ok_or_else(too_long)?;
        if !fraction.is_empty() {
            // 18 digits are below a nanosecond even for hours, and keep the
            // product inside u128.
            let digits = &fraction[..fraction.len().min(18)];
            let scale = 10u128.pow(digits.len() as u32);
            let fraction: u128 = digits.parse().map_err(|_| too_long())?;
            nanos += fraction * nanos_per_unit / scale;
        }
        total = total.checked_add(nanos).ok_or_else(too_long)?;
        rest = after;
    }
    u64::try_from(total)
        .map(Duration::from_nanos)
        .map_err(|_| format!("duration {text:?} is too long"))
}

/// One URL of a URL list. Like etcd's `types.NewURLs`: http or https, an
/// explicit `host:port`, and nothing after it (no path, query or fragment).
pub(super) fn url(text: &str) -> Result<Url, String> {
    let text = text.trim();
    let url = Url::parse(text)
        .map_err(|e| format!("{text:?} is not a URL of the form http(s)://host:port ({e})"))?;
    if !has_explicit_port(text) {
        return Err(format!("{text} must have the form http(s)://host:port"));
    }
    check_url(&url)?;
    Ok(url)
}

/// The checks that can be made on a parsed URL (also run by `validate`).
pub(super) fn check_url(url: &Url) -> Result<(), String> {
    let shown = display_url(url);
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{shown}: the scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) || url.port_or_known_default().is_none() {
        return Err(format!("{shown} must have the form http(s)://host:port"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{shown} must not contain a user name or password"));
    }
    if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{shown} must not contain a path"));
    }
    Ok(())
}

/// A URL to listen on must name an IP address (or `localhost`): a server binds
/// addresses, not DNS names (etcd's `checkBindURLs`).
pub(super) fn check_bind_url(url: &Url) -> Result<(), String> {
    check_url(url)?;
    match url.host() {
        Some(Host::Ipv4(_) | Host::Ipv6(_)) => Ok(()),
        Some(Host::Domain("localhost")) => Ok(()),
        _ => Err(format!(
            "{}: a URL to listen on must name an IP address or localhost",
            display_url(url)
        )),
    }
}

/// Whether the authority of a raw URL spells out a port. The `url` crate drops
/// a port equal to the scheme's default, so `http://host:80` and `http://host`
/// parse alike; etcd accepts the first and rejects the second.
fn has_explicit_port(raw: &str) -> bool {
    let Some((_, after_scheme)) = raw.split_once("://") else {
        return false;
    };
    let authority = after_scheme
        .split(['/', '?', '#'])
        .next()
        .unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let port = if host_port.starts_with('[') {
        host_port.split_once("]:").map(|(_, port)| port)
    } else {
        host_port.rsplit_once(':').map(|(_, port)| port)
    };
    port.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// A URL as people write it: `http://127.0.0.1:2379`, without the `/` the
/// `url` crate adds.
pub(super) fn display_url(url: &Url) -> String {
    url.as_str().trim_end_matches('/').to_string()
}

/// URLs joined with commas, the way the flags take them.
pub(super) fn display_urls<'a>(urls: impl IntoIterator<Item = &'a Url>) -> String {
    urls.into_iter()
        .map(display_url)
        .collect::<Vec<_>>()
        .join(",")
}

/// The items of a list value: comma-separated in a flag or variable, a TOML
/// array (or a comma-separated string) in the file. Blanks around items and
/// empty items are dropped.
pub(super) fn split_list(items: &[String]) -> Vec<&str> {
    items
        .iter()
        .flat_map(|item| item.split(','))
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .collect()
}

/// A non-empty list of URLs.
pub(super) fn url_list(items: &[String]) -> Result<Vec<Url>, String> {
    let items = split_list(items);
    if items.is_empty() {
        return Err("expected at least one URL".into());
    }
    items.into_iter().map(url).collect()
}

/// `--initial-cluster`: `name=url` pairs separated by commas. A member with
/// several peer URLs appears once per URL (`a=http://10.0.0.1:2380,a=http://10.0.0.2:2380`).
pub(super) fn initial_cluster(items: &[String]) -> Result<Vec<(String, Url)>, String> {
    let items = split_list(items);
    if items.is_empty() {
        return Err("expected at least one name=url pair".into());
    }
    items
        .into_iter()
        .map(|item| {
            let (name, peer) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?} is not a name=url pair"))?;
            let name = name.trim();
            if name.is_empty() {
                return Err(format!("{item:?} has an empty member name"));
            }
            Ok((name.to_string(), url(peer)?))
        })
        .collect()
}

/// `--auth-token`: `simple`, or etcd's
/// `jwt,pub-key=PATH,priv-key=PATH,sign-method=RS256,ttl=5m`
/// (priv-key and ttl optional).
pub(super) fn auth_token(text: &str) -> Result<crate::auth::TokenConfig, String> {
    use crate::auth::jwt::{check_sign_method, JwtConfig};
    let (kind, options) = text.split_once(',').unwrap_or((text, ""));
    match kind.trim() {
        "simple" => Ok(crate::auth::TokenConfig::Simple),
        "jwt" => {
            let (mut method, mut public, mut private, mut ttl) = (None, None, None, None);
            for option in options.split(',').map(str::trim).filter(|o| !o.is_empty()) {
                let (key, value) = option
                    .split_once('=')
                    .ok_or_else(|| format!("jwt option {option:?} is not key=value"))?;
                match key {
                    "sign-method" => method = Some(value.to_string()),
                    "pub-key" => public = Some(std::path::PathBuf::from(value)),
                    "priv-key" => private = Some(std::path::PathBuf::from(value)),
                    "ttl" => ttl = Some(go_duration(value).map_err(|e| format!("jwt ttl: {e}"))?),
                    other => return Err(format!("unknown jwt option {other:?}")),
                }
            }
            let sign_method = method.ok_or("jwt needs sign-method")?;
            check_sign_method(&sign_method)?;
            Ok(crate::auth::TokenConfig::Jwt(JwtConfig {
                sign_method,
                pub_key: public.ok_or("jwt needs pub-key")?,
                priv_key: private,
                ttl: ttl.unwrap_or(std::time::Duration::from_secs(5 * 60)),
            }))
        }
        _ => Err(format!("unknown token type {kind:?} (want simple or jwt)")),
    }
}

/// `--bcrypt-cost`: bcrypt's range, 4 to 31.
pub(super) fn bcrypt_cost(text: &str) -> Result<u32, String> {
    let cost = unsigned(text)?;
    match u32::try_from(cost) {
        Ok(c) if (4..=31).contains(&c) => Ok(c),
        _ => Err(format!("{cost} is outside bcrypt's 4 to 31")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse_like_time_parse_duration() {
        struct Case {
            text: &'static str,
            expect: Result<Duration, &'static str>,
        }
        let cases = [
            Case {
                text: "0",
                expect: Ok(Duration::ZERO),
            },
            Case {
                text: "30m",
                expect: Ok(Duration::from_secs(1800)),
            },
            Case {
                text: "1h30m",
                expect: Ok(Duration::from_secs(5400)),
            },
            Case {
                text: "1.5h",
                expect: Ok(Duration::from_secs(5400)),
            },
            Case {
                text: ".5s",
                expect: Ok(Duration::from_millis(500)),
            },
            Case {
                text: "+10s",
                expect: Ok(Duration::from_secs(10)),
            },
            Case {
                text: "250ms",
                expect: Ok(Duration::from_millis(250)),
            },
            Case {
                text: "3µs",
                expect: Ok(Duration::from_micros(3)),
            },
            Case {
                text: "3us",
                expect: Ok(Duration::from_micros(3)),
            },
            Case {
                text: "7ns",
                expect: Ok(Duration::from_nanos(7)),
            },
            Case {
                text: "1h 30m",
                expect: Err("unknown unit"),
            },
            Case {
                text: "5",
                expect: Err("missing unit"),
            },
            Case {
                text: "-1h",
                expect: Err("negative"),
            },
            Case {
                text: "1d",
                expect: Err("unknown unit"),
            },
            Case {
                text: "h",
                expect: Err("not a duration"),
            },
            Case {
                text: "",
                expect: Err("expected a duration"),
            },
            Case {
                text: "99999999999999999999h",
                expect: Err("too long"),
            },
        ];
        for case in cases {
            match (go_duration(case.text), case.expect) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{:?}", case.text),
                (Err(got), Err(want)) => {
                    assert!(
                        got.contains(want),
                        "{:?}: {got:?} lacks {want:?}",
                        case.text
                    )
                }
                (got, want) => panic!("{:?}: got {got:?}, want {want:?}", case.text),
            }
        }
    }

    #[test]
    fn explicit_ports_are_told_apart_from_default_ones() {
        let cases = [
            ("http://10.0.0.1:80", true),
            ("http://10.0.0.1", false),
            ("http://10.0.0.1/", false),
            ("https://[::1]:2379", true),
            ("https://[::1]", false),
            ("http://user@host:2379", true),
            ("http://host:", false),
            ("host:2379", false),
        ];
        for (raw, want) in cases {
            assert_eq!(has_explicit_port(raw), want, "{raw}");
        }
    }
}
