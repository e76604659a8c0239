use super::*;
use toml::Value;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_give_one_example_pool() {
    let cfg = AppConfig::load(None, env(&[])).unwrap();
    assert_eq!(cfg.pools.len(), 1);
    assert_eq!(
        cfg.pools[0].adapter,
        "snakepit_bridge.example:ExampleAdapter"
    );
    assert_eq!(cfg.server.listen, "127.0.0.1:4000");
}

#[test]
fn env_overrides_reach_every_section() {
    let cfg = AppConfig::load(
        None,
        env(&[
            ("SNAKEPIT_SERVER__LISTEN", "0.0.0.0:5000"),
            ("SNAKEPIT_POOLS__DEFAULT__SIZE", "6"),
            ("SNAKEPIT_TELEMETRY__TRACES__SAMPLING_RATIO", "0.25"),
            ("SNAKEPIT_HEALTH__CRITERIA__MAX_QUEUE_SIZE", "7"),
            ("SNAKEPIT_POOLS__ML__ADAPTER", "models:Model"),
            ("SNAKEPIT_PYTHON", "/usr/bin/python3"),
        ]),
    )
    .unwrap();
    assert_eq!(cfg.server.listen, "0.0.0.0:5000");
    assert_eq!(cfg.pools[0].size, 6);
    assert_eq!(cfg.pools[1].name, "ml");
    assert_eq!(cfg.pools[1].adapter, "models:Model");
    assert_eq!(cfg.telemetry.traces.sampling_ratio, 0.25);
    assert_eq!(cfg.health.criteria.max_queue_size, 7);
}

#[test]
fn bad_values_name_key_value_and_allowed() {
    let err = AppConfig::load(None, env(&[("SNAKEPIT_POOLS__DEFAULT__SIZE", "0")])).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("pools.default.size = 0") && text.contains("1..=1024"),
        "{text}"
    );

    let err = AppConfig::load(None, env(&[("SNAKEPIT_POOLS__DEFAULT__SIZE", "many")])).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("size") && text.contains("many"), "{text}");

    let err = AppConfig::load(None, env(&[("SNAKEPIT_SERVER__LISTN", "x")])).unwrap_err();
    assert!(err.to_string().contains("listn"), "{err}");

    let err = AppConfig::load(None, env(&[("SNAKEPIT_SERVER__LISTEN", "localhost")])).unwrap_err();
    assert!(
        err.to_string().contains("server.listen = localhost"),
        "{err}"
    );
}

#[test]
fn many_overrides_on_one_pool_make_one_pool() {
    let cfg = AppConfig::load(
        None,
        env(&[
            ("SNAKEPIT_POOLS__DEFAULT__SIZE", "3"),
            ("SNAKEPIT_POOLS__DEFAULT__MAX_REQUESTS", "5"),
            ("SNAKEPIT_POOLS__DEFAULT__QUEUE_TIMEOUT_MS", "250"),
            (
                "SNAKEPIT_POOLS__DEFAULT__SESSIONS__ON_WORKER_LOSS",
                "recreate",
            ),
            ("SNAKEPIT_POOLS__DEFAULT__PYTHON__ENV__MODE", "fast"),
        ]),
    )
    .unwrap();
    assert_eq!(cfg.pools.len(), 1, "{:?}", cfg.pools);
    let p = &cfg.pools[0];
    assert_eq!(p.name, "default");
    assert_eq!((p.size, p.max_requests, p.queue_timeout_ms), (3, 5, 250));
    assert_eq!(
        p.sessions.on_worker_loss,
        snakepit_core::OnWorkerLoss::Recreate
    );
    assert_eq!(p.python.env.get("MODE").map(String::as_str), Some("fast"));
}

#[test]
fn many_overrides_on_pools_from_the_file() {
    let dir = std::env::temp_dir().join(format!("snakepit-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("snakepit.toml");
    std::fs::write(
        &path,
        "[[pools]]\nname = \"ml\"\nsize = 1\n\n[[pools]]\nname = \"cpu\"\n",
    )
    .unwrap();
    let cfg = AppConfig::load(
        Some(&path),
        env(&[
            ("SNAKEPIT_POOLS__ML__SIZE", "4"),
            ("SNAKEPIT_POOLS__ML__MAX_REQUESTS", "9"),
            ("SNAKEPIT_POOLS__ML__STATS_WINDOW_SECS", "5"),
            ("SNAKEPIT_POOLS__CPU__SIZE", "2"),
            ("SNAKEPIT_POOLS__1__MAX_QUEUE_SIZE", "7"),
        ]),
    )
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let names: Vec<&str> = cfg.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["ml", "cpu"]);
    let (ml, cpu) = (&cfg.pools[0], &cfg.pools[1]);
    assert_eq!((ml.size, ml.max_requests, ml.stats_window_secs), (4, 9, 5));
    assert_eq!((cpu.size, cpu.max_queue_size), (2, 7));
}

#[test]
fn overrides_take_the_type_of_the_key_they_target() {
    let cfg = AppConfig::load(
        None,
        env(&[
            ("SNAKEPIT_HEALTH__AUTH_TOKEN", "1234567890123456"),
            ("SNAKEPIT_TELEMETRY__SERVICE_NAME", "true"),
            ("SNAKEPIT_POOLS__DEFAULT__PYTHON__ENV__THREADS", "8"),
            (
                "SNAKEPIT_EVENTS__SANITIZE__SENSITIVE_KEYS",
                r#"["pin", "otp"]"#,
            ),
            ("SNAKEPIT_TELEMETRY__TRACES__SAMPLING_RATIO", "1"),
        ]),
    )
    .unwrap();
    assert_eq!(cfg.health.auth_token.as_deref(), Some("1234567890123456"));
    assert_eq!(cfg.telemetry.service_name, "true");
    assert_eq!(
        cfg.pools[0].python.env.get("THREADS").map(String::as_str),
        Some("8")
    );
    assert_eq!(cfg.events.sanitize.sensitive_keys, ["pin", "otp"]);
    assert_eq!(cfg.telemetry.traces.sampling_ratio, 1.0);
    // A wrong type still fails, naming the key.
    let err = AppConfig::load(None, env(&[("SNAKEPIT_POOLS__DEFAULT__SIZE", "-3")])).unwrap_err();
    assert!(err.to_string().contains("size"), "{err}");
}

#[test]
fn pools_are_found_by_name_in_any_case_or_by_index_and_typos_are_refused() {
    let dir = std::env::temp_dir().join(format!("snakepit-cfg2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("snakepit.toml");
    std::fs::write(
        &path,
        "[[pools]]\nname = \"GPU\"\nadapter = \"models:Gpu\"\n",
    )
    .unwrap();
    let load = |vars: &[(&str, &str)]| AppConfig::load(Some(&path), env(vars));
    let cfg = load(&[
        ("SNAKEPIT_POOLS__GPU__SIZE", "4"),
        ("SNAKEPIT_POOLS__0__PYTHON__ENV__OMP_NUM_THREADS", "4"),
        ("SNAKEPIT_POOLS__0__PYTHON__ENV__HF_HOME", "/models"),
    ])
    .unwrap();
    assert_eq!(cfg.pools.len(), 1, "{:?}", cfg.pools);
    let gpu = &cfg.pools[0];
    assert_eq!((gpu.name.as_str(), gpu.size), ("GPU", 4));
    assert_eq!(
        gpu.python.env.get("OMP_NUM_THREADS").map(String::as_str),
        Some("4")
    );
    assert_eq!(
        gpu.python.env.get("HF_HOME").map(String::as_str),
        Some("/models")
    );
    // A name the file does not have would start an extra pool: refused, with the fix.
    let err = load(&[("SNAKEPIT_POOLS__GPUU__SIZE", "4")])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no pool named 'gpuu'") && err.contains("GPU") && err.contains("__ADAPTER"),
        "{err}"
    );
    // With its adapter it is a new pool.
    let cfg = load(&[("SNAKEPIT_POOLS__CPU__ADAPTER", "models:Cpu")]).unwrap();
    assert_eq!(cfg.pools.len(), 2);
    let _ = std::fs::remove_dir_all(&dir);

    // Without a file, index 0 and DEFAULT are the bundled default pool.
    let cfg = AppConfig::load(
        None,
        env(&[
            ("SNAKEPIT_POOLS__0__SIZE", "3"),
            ("SNAKEPIT_POOLS__DEFAULT__MAX_REQUESTS", "7"),
        ]),
    )
    .unwrap();
    assert_eq!(cfg.pools.len(), 1);
    assert_eq!((cfg.pools[0].size, cfg.pools[0].max_requests), (3, 7));
}

#[test]
fn values_that_fit_no_type_name_their_variable_and_key() {
    let err = |var: &str, raw: &str| {
        AppConfig::load(None, env(&[(var, raw)]))
            .unwrap_err()
            .to_string()
    };
    let e = err("SNAKEPIT_POOLS__DEFAULT__SIZE", "");
    assert!(
        e.contains("SNAKEPIT_POOLS__DEFAULT__SIZE") && e.contains("pools.default.size"),
        "{e}"
    );
    let e = err("SNAKEPIT_SERVER__DRAIN_TIMEOUT_MS", "soon");
    assert!(
        e.contains("server.drain_timeout_ms") && e.contains("soon"),
        "{e}"
    );
    // Leading zeros are a decimal number, not "too large".
    let cfg = AppConfig::load(None, env(&[("SNAKEPIT_POOLS__DEFAULT__SIZE", "08")])).unwrap();
    assert_eq!(cfg.pools[0].size, 8);
    // A long digit string is fine for a string key.
    let token = "123456789012345678901234567890";
    let cfg = AppConfig::load(None, env(&[("SNAKEPIT_HEALTH__AUTH_TOKEN", token)])).unwrap();
    assert_eq!(cfg.health.auth_token.as_deref(), Some(token));
    // The worker's own variables are not configuration paths.
    AppConfig::load(None, env(&[("SNAKEPIT_PYTHON_LOG_LEVEL", "DEBUG")])).unwrap();
}

/// Every key of the configuration whose value `is` that kind, as a dotted path
/// (pools as `pools.default`).
fn keys_of(table: &Table, prefix: &str, is: fn(&Value) -> bool, out: &mut Vec<String>) {
    for (k, v) in table {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            Value::Table(t) => keys_of(t, &path, is, out),
            Value::Array(list) if k == "pools" => {
                if let Some(Value::Table(t)) = list.first() {
                    keys_of(t, "pools.default", is, out)
                }
            }
            v if is(v) => out.push(path),
            _ => {}
        }
    }
}

fn var_of(key: &str) -> String {
    format!("SNAKEPIT_{}", key.replace('.', "__").to_ascii_uppercase())
}

#[test]
fn non_finite_and_huge_numbers_are_refused_for_every_float_key() {
    let mut defaults = AppConfig::default();
    defaults.pools.push(PoolConfig::default());
    let table = Table::try_from(&defaults).unwrap();
    let mut keys = Vec::new();
    keys_of(&table, "", Value::is_float, &mut keys);
    assert!(keys.len() >= 8, "{keys:?}");
    for key in &keys {
        for raw in ["nan", "inf", "-inf", "1e300", "-1"] {
            match AppConfig::load(None, env(&[(&var_of(key), raw)])) {
                Err(LoadError::Invalid(e)) => assert_eq!(&e.key, key, "{raw}: {e}"),
                other => panic!("{key} = {raw}: expected a range error, got {other:?}"),
            }
        }
    }
}

#[test]
fn huge_values_are_refused_for_every_key_with_its_name() {
    let mut defaults = AppConfig::default();
    defaults.pools.push(PoolConfig::default());
    defaults.telemetry.statsd = Some(Default::default());
    let table = Table::try_from(&defaults).unwrap();
    let mut keys = Vec::new();
    keys_of(&table, "", Value::is_integer, &mut keys);
    assert!(keys.len() > 40, "{keys:?}");
    // Counts, not durations or sizes: any value means what it says.
    let unbounded = ["pools.default.max_requests"];
    for key in &keys {
        let var = var_of(key);
        let mut vars = vec![(var.clone(), i64::MAX.to_string())];
        if key.starts_with("telemetry.statsd") {
            vars.push((
                "SNAKEPIT_TELEMETRY__STATSD__ADDRESS".into(),
                "127.0.0.1:8125".into(),
            ));
        }
        let result = AppConfig::load(None, vars);
        if unbounded.contains(&key.as_str()) {
            assert!(result.is_ok(), "{key}: {result:?}");
            continue;
        }
        let leaf = key.rsplit('.').next().unwrap_or(key);
        match result {
            Err(LoadError::Invalid(e)) => assert_eq!(&e.key, key, "{var}: {e}"),
            // A 32-bit key: serde refuses the value, naming the key.
            Err(LoadError::Parse { message, .. }) if message.contains(leaf) => {}
            other => panic!("{var} = i64::MAX: expected a range error, got {other:?}"),
        }
        let err = AppConfig::load(None, env(&[(&var, "18446744073709551615")])).unwrap_err();
        assert!(err.to_string().contains("out of range"), "{var}: {err}");
    }
}

#[test]
fn the_shipped_example_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../snakepit.example.toml");
    let cfg = AppConfig::load(Some(&path), env(&[])).unwrap();
    assert!(!cfg.pools.is_empty());
}
