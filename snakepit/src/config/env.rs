//! `SNAKEPIT_<SECTION>__<KEY>` environment overrides, applied to the TOML table of the
//! file before it is deserialized.
//!
//! - A variable's path is its name in lower case, sections joined by `__`; below a map
//!   key (`python.env`, `telemetry.otlp.headers`) the rest is a name and keeps its case
//!   (`SNAKEPIT_POOLS__DEFAULT__PYTHON__ENV__OMP_NUM_THREADS` sets `OMP_NUM_THREADS`).
//! - Pools are addressed by name (case-insensitively) or by index. A name the file does
//!   not define adds a pool only if its adapter is set too (else a typo would silently
//!   start an extra pool of the example adapter); `DEFAULT` always names the bundled
//!   default pool when the file defines none.
//! - A value is read by the type of the key it targets: each variable is tried alone,
//!   as TOML (`8`, `true`, `["a"]`) and as a string, against the configuration's types,
//!   so `SNAKEPIT_HEALTH__AUTH_TOKEN=123456` stays a string and a value that fits no
//!   type is reported with its variable and key.

use std::collections::BTreeSet;

use toml::{Table, Value};

use super::{AppConfig, LoadError};

const ENV_PREFIX: &str = "SNAKEPIT_";
/// Variables with the prefix that are not config paths.
const NOT_PATHS: [&str; 8] = [
    "SNAKEPIT_PYTHON",
    "SNAKEPIT_VENV",
    "SNAKEPIT_BASE_PYTHON",
    "SNAKEPIT_CONFIG",
    "SNAKEPIT_OTEL",
    "SNAKEPIT_WORKER_SPANS",
    "SNAKEPIT_BRIDGE_SOURCE",
    "SNAKEPIT_PYTHON_LOG_LEVEL",
];

/// Apply every `SNAKEPIT_*` variable of `env` to `root`, in name order.
pub(super) fn apply(
    root: &mut Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), LoadError> {
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX) && !NOT_PATHS.contains(&k.as_str()))
        .collect();
    vars.sort();
    let file_pools: BTreeSet<String> = pool_names(root);
    let mut added: Vec<(String, String)> = Vec::new();
    for (var, raw) in &vars {
        let path = key_path(var);
        let value = typed_value(&path, raw, var)?;
        if let Some(name) = set_path(root, &path, value, var)? {
            added.push((name, var.clone()));
        }
    }
    for (name, var) in added {
        let bundled_default = name == "default" && file_pools.is_empty();
        let has_adapter = pool(root, &name).is_some_and(|p| p.contains_key("adapter"));
        if !bundled_default && !has_adapter {
            let known: Vec<String> = file_pools.iter().cloned().collect();
            return Err(bad(
                &var,
                &format!(
                    "no pool named '{name}' in the configuration (pools: {}); to add one from \
                     the environment, also set SNAKEPIT_POOLS__{}__ADAPTER",
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    },
                    name.to_ascii_uppercase()
                ),
            ));
        }
    }
    Ok(())
}

fn bad(var: &str, why: &str) -> LoadError {
    LoadError::Parse {
        source_name: format!("environment variable {var}"),
        message: why.to_string(),
    }
}

fn pool_names(root: &Table) -> BTreeSet<String> {
    match root.get("pools") {
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(|p| p.get("name").and_then(Value::as_str))
            .map(str::to_ascii_lowercase)
            .collect(),
        _ => BTreeSet::new(),
    }
}

fn pool<'a>(root: &'a Table, name: &str) -> Option<&'a Table> {
    let Some(Value::Array(list)) = root.get("pools") else {
        return None;
    };
    list.iter()
        .filter_map(Value::as_table)
        .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
}

/// The key path of a variable: lower case, except below a map key.
fn key_path(var: &str) -> Vec<String> {
    let segments: Vec<&str> = var[ENV_PREFIX.len()..].split("__").collect();
    let mut path: Vec<String> = Vec::with_capacity(segments.len());
    for (i, segment) in segments.iter().enumerate() {
        path.push(segment.to_ascii_lowercase());
        let below_map = matches!(
            path.as_slice(),
            [.., a, b] if (a == "python" && b == "env") || (a == "otlp" && b == "headers")
        );
        if below_map {
            path.extend(segments[i + 1..].iter().map(|s| s.to_string()));
            break;
        }
    }
    path
}

/// `raw` as a TOML value (`8`, `true`, `["a"]`), or `None` when it is not one. Integers
/// are read as decimal whatever TOML thinks of leading zeros (`08` is 8).
fn parse_toml(raw: &str) -> Result<Option<Value>, String> {
    let digits = raw.strip_prefix(['+', '-']).unwrap_or(raw);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return match raw.parse::<i64>() {
            Ok(n) => Ok(Some(Value::Integer(n))),
            Err(_) => Err(format!(
                "{raw} is out of range (integers are -{0}..={0})",
                i64::MAX
            )),
        };
    }
    Ok(format!("v = {raw}")
        .parse::<Table>()
        .ok()
        .and_then(|mut t| t.remove("v")))
}

/// Whether `value` alone at `path` deserializes; the error if not.
fn probe(path: &[String], value: &Value, var: &str) -> Result<(), String> {
    let mut path = path.to_vec();
    // An index addresses a pool of the file; alone, any named pool stands for it.
    if path.len() > 2 && path[0] == "pools" && path[1].parse::<usize>().is_ok() {
        path[1] = "default".into();
    }
    let mut table = Table::new();
    set_path(&mut table, &path, value.clone(), var).map_err(|e| e.to_string())?;
    Value::Table(table)
        .try_into::<AppConfig>()
        .map(|_| ())
        .map_err(|e| e.to_string().trim().to_string())
}

/// The value of variable `var` for `path`, read by the type of the key it targets.
fn typed_value(path: &[String], raw: &str, var: &str) -> Result<Value, LoadError> {
    let string = Value::String(raw.into());
    let parsed = parse_toml(raw).map(|v| v.filter(|v| !v.is_str()));
    let key = path.join(".");
    match parsed {
        Ok(Some(parsed)) => match probe(path, &parsed, var) {
            Ok(()) => Ok(parsed),
            Err(typed) => match probe(path, &string, var) {
                Ok(()) => Ok(string),
                Err(_) => Err(bad(var, &format!("{key} = {raw}: {typed}"))),
            },
        },
        Ok(None) => match probe(path, &string, var) {
            Ok(()) => Ok(string),
            Err(e) => Err(bad(var, &format!("{key} = {raw:?}: {e}"))),
        },
        // Digits beyond i64: fine for a string key, else say so.
        Err(range) => match probe(path, &string, var) {
            Ok(()) => Ok(string),
            Err(_) => Err(bad(var, &format!("{key}: {range}"))),
        },
    }
}

/// Set `path` in `root` to `value`; `pools` is addressed by name (case-insensitively)
/// or index. Returns the name of a pool it had to add.
fn set_path(
    root: &mut Table,
    path: &[String],
    value: Value,
    var: &str,
) -> Result<Option<String>, LoadError> {
    let Some((first, rest)) = path.split_first() else {
        return Err(bad(var, "empty key path"));
    };
    if rest.is_empty() {
        root.insert(first.clone(), value);
        return Ok(None);
    }
    if first == "pools" {
        let pools = root
            .entry("pools")
            .or_insert_with(|| Value::Array(Vec::new()));
        let Value::Array(list) = pools else {
            return Err(bad(var, "`pools` is not a list"));
        };
        let (selector, inner) = (&rest[0], &rest[1..]);
        if inner.is_empty() {
            return Err(bad(
                var,
                "name a pool key, e.g. SNAKEPIT_POOLS__DEFAULT__SIZE",
            ));
        }
        let named = |p: &Value| {
            p.get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| n.eq_ignore_ascii_case(selector))
        };
        let mut added = None;
        let index = match selector.parse::<usize>() {
            Ok(i) if i < list.len() => i,
            // The default pool exists even when the file lists none.
            Ok(0) => {
                list.push(Value::Table(Table::from_iter([(
                    "name".to_string(),
                    Value::String("default".into()),
                )])));
                added = Some("default".to_string());
                0
            }
            Ok(i) => {
                return Err(bad(
                    var,
                    &format!("no pool at index {i} ({} configured)", list.len()),
                ))
            }
            Err(_) => match list.iter().position(named) {
                Some(i) => i,
                None => {
                    list.push(Value::Table(Table::from_iter([(
                        "name".to_string(),
                        Value::String(selector.clone()),
                    )])));
                    added = Some(selector.clone());
                    list.len() - 1
                }
            },
        };
        let Value::Table(pool) = &mut list[index] else {
            return Err(bad(var, "a pool entry is not a table"));
        };
        set_path(pool, inner, value, var)?;
        return Ok(added);
    }
    let child = root
        .entry(first.clone())
        .or_insert_with(|| Value::Table(Table::new()));
    match child {
        Value::Table(t) => set_path(t, rest, value, var),
        _ => Err(bad(var, &format!("`{first}` is not a section"))),
    }
}
