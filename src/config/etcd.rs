//! What lets cairn drop into an etcd deployment: etcd's `ETCD_*`
//! environment variables, etcd's YAML `--config-file`, and the start-up
//! check of every etcd flag cairn accepts without implementing it.
//!
//! Both sources turn etcd's names into option keys through the one
//! [`OPTIONS`](super::options::OPTIONS) table (`ETCD_DATA_DIR` and the YAML
//! key `data-dir` are the option `data_dir`), so they cannot disagree with
//! the flags. Each value keeps where it came from (the variable's name, the
//! file's path) for error messages.

use std::path::Path;

use config::{Map, Source, Value, ValueKind};
use yaml_rust2::{Yaml, YamlLoader};

use super::options::{self, Kind, Opt, Support, CONFIG_FILE, ETCD_ENV_PREFIX, OPTIONS};
use super::values;

/// Origins of values read from `ETCD_*` variables start with this, followed
/// by the variable's name (`env:ETCD_NAME`).
pub(super) const ETCD_ENV_ORIGIN: &str = "env:";

/// A layer of already-keyed values, as a `config` source.
#[derive(Debug, Clone)]
pub(super) struct Keyed(pub Map<String, Value>);

impl Source for Keyed {
    fn clone_into_box(&self) -> Box<dyn Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<Map<String, Value>, config::ConfigError> {
        Ok(self.0.clone())
    }
}

/// The options set by `ETCD_*` variables, and a warning for each `ETCD_*`
/// variable that is no option (etcd warns about those too). An option set
/// under two names (`ETCD_EXPERIMENTAL_CORRUPT_CHECK_TIME` and
/// `ETCD_CORRUPT_CHECK_TIME`) takes its first name's value. Empty values are
/// unset, as with `CAIRN_*`.
pub(super) fn env_layer(env: &Map<String, String>) -> (Keyed, Vec<String>) {
    let mut layer = Map::new();
    let mut used = Vec::new();
    for o in OPTIONS.iter().filter(|o| o.key != CONFIG_FILE) {
        for var in o.etcd_env_vars() {
            if let Some(value) = env.get(&var).filter(|v| !v.is_empty()) {
                if !layer.contains_key(o.key) {
                    let origin = format!("{ETCD_ENV_ORIGIN}{var}");
                    layer.insert(
                        o.key.to_string(),
                        Value::new(Some(&origin), ValueKind::String(value.clone())),
                    );
                }
            }
            used.push(var);
        }
    }
    let config_file_var = format!("{ETCD_ENV_PREFIX}_CONFIG_FILE");
    let prefix = format!("{ETCD_ENV_PREFIX}_");
    let mut unknown: Vec<String> = env
        .keys()
        .filter(|k| k.starts_with(&prefix) && **k != config_file_var && !used.contains(k))
        .map(|k| format!("unrecognized environment variable {k} ignored"))
        .collect();
    unknown.sort();
    (Keyed(layer), unknown)
}

/// Whether a config file is in etcd's YAML format rather than cairn's TOML:
/// by its extension (`.yml`, `.yaml` / `.toml`), else by its text: a YAML
/// mapping (`name: x`) is not TOML (`name = "x"`), and TOML is not a YAML
/// mapping.
pub(super) fn is_yaml(path: &Path, text: &str) -> bool {
    match path.extension().and_then(|e| e.to_str()) {
        Some("yml" | "yaml") => true,
        Some("toml") => false,
        _ => matches!(
            YamlLoader::load_from_str(text).as_deref(),
            Ok([Yaml::Hash(_), ..])
        ),
    }
}

/// etcd's nested TLS sections, and the prefix their keys take as flags
/// (`peer-transport-security: {cert-file}` is `--peer-cert-file`).
const TLS_SECTIONS: [(&str, &str); 2] = [
    ("client-transport-security", ""),
    ("peer-transport-security", "peer-"),
];

/// Reads etcd's YAML config file (`etcd.conf.yml`: the flag names as keys,
/// TLS settings in two nested sections) into option keys. As etcd does, an
/// unknown key is ignored, with a warning; one in a TLS section with a value
/// is an error instead, since ignoring it would serve without the security
/// asked for. `null` (`discovery:` with nothing after it) leaves the option
/// unset.
pub(super) fn yaml_layer(path: &Path, text: &str) -> Result<(Keyed, Vec<String>), String> {
    let docs = YamlLoader::load_from_str(text).map_err(|e| e.to_string())?;
    let origin = path.display().to_string();
    let mut layer = Map::new();
    let mut warnings = Vec::new();
    let top = match docs.first() {
        None | Some(Yaml::Null) => return Ok((Keyed(layer), warnings)),
        Some(Yaml::Hash(top)) => top,
        Some(_) => return Err("expected a mapping of flag names to values".into()),
    };
    for (key, value) in top {
        let key = scalar(key).ok_or("a key is not a string")?;
        if let Some((section, prefix)) = TLS_SECTIONS.iter().find(|(s, _)| *s == key) {
            let Yaml::Hash(entries) = value else {
                if matches!(value, Yaml::Null) {
                    continue;
                }
                return Err(format!("{section}: expected a mapping"));
            };
            for (inner, value) in entries {
                let inner = scalar(inner).ok_or("a key is not a string")?;
                let flag = format!("{prefix}{inner}");
                match options::by_name(&flag) {
                    Some(o) => {
                        insert(&mut layer, o, value, &origin, &format!("{section}.{inner}"))?
                    }
                    None if is_unset(value) => {}
                    None => {
                        return Err(format!(
                            "{section}.{inner}: TLS is not supported by this cairn; refusing to \
                             serve without it"
                        ))
                    }
                }
            }
            continue;
        }
        match options::by_name(&key).filter(|o| o.key != CONFIG_FILE) {
            Some(o) => insert(&mut layer, o, value, &origin, &key)?,
            None => warnings.push(format!(
                "unknown key `{key}` in --config-file {origin} ignored"
            )),
        }
    }
    Ok((Keyed(layer), warnings))
}

fn insert(
    layer: &mut Map<String, Value>,
    o: &Opt,
    value: &Yaml,
    origin: &str,
    key: &str,
) -> Result<(), String> {
    let kind = match value {
        Yaml::Null => return Ok(()),
        Yaml::Array(items) => ValueKind::Array(
            items
                .iter()
                .map(|item| {
                    scalar(item)
                        .map(|s| Value::new(Some(&origin.to_string()), ValueKind::String(s)))
                        .ok_or_else(|| format!("{key}: expected a list of strings"))
                })
                .collect::<Result<_, _>>()?,
        ),
        other => ValueKind::String(
            scalar(other).ok_or_else(|| format!("{key}: expected a string, number or list"))?,
        ),
    };
    layer.insert(
        o.key.to_string(),
        Value::new(Some(&origin.to_string()), kind),
    );
    Ok(())
}

/// A YAML scalar as the text a flag would have carried.
fn scalar(value: &Yaml) -> Option<String> {
    match value {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A value that leaves a setting at etcd's default: nothing, "", false or
/// an empty list.
fn is_unset(value: &Yaml) -> bool {
    match value {
        Yaml::Null | Yaml::Boolean(false) => true,
        Yaml::String(s) => s.is_empty(),
        Yaml::Array(items) => items.is_empty(),
        _ => false,
    }
}

/// Whether a value given to an etcd option cairn does not implement agrees
/// with what cairn does anyway. Switches compare as booleans (`--pre-vote`,
/// `=1`, `=True` are all true).
pub(super) fn agrees(o: &Opt, value: &str, agrees: &[&str]) -> Result<bool, String> {
    let value = value.trim();
    Ok(match o.kind {
        Kind::Bool => {
            let given = values::go_bool(value)?;
            agrees
                .iter()
                .any(|a| values::go_bool(a).is_ok_and(|b| b == given))
        }
        Kind::Value => agrees.contains(&value),
    })
}

/// The start-up warning or refusal for an etcd option cairn does not
/// implement, given the value some layer set it to.
pub(super) fn check_unimplemented(o: &Opt, value: &str) -> Result<Option<String>, String> {
    match o.support {
        Support::Implemented => Ok(None),
        Support::Ignored { agrees: ok, reason } => Ok((!agrees(o, value, ok)?)
            .then(|| format!("flag --{} accepted and ignored: {reason}", o.flag))),
        Support::Refused { agrees: ok, reason } => match agrees(o, value, ok)? {
            true => Ok(None),
            false => Err(reason.to_string()),
        },
    }
}
