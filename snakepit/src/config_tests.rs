use super::*;

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
    assert_eq!(p.python.env.get("mode").map(String::as_str), Some("fast"));
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
        cfg.pools[0].python.env.get("threads").map(String::as_str),
        Some("8")
    );
    assert_eq!(cfg.events.sanitize.sensitive_keys, ["pin", "otp"]);
    assert_eq!(cfg.telemetry.traces.sampling_ratio, 1.0);
    // A wrong type still fails, naming the key.
    let err = AppConfig::load(None, env(&[("SNAKEPIT_POOLS__DEFAULT__SIZE", "-3")])).unwrap_err();
    assert!(err.to_string().contains("size"), "{err}");
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
        assert!(err.to_string().contains("too large"), "{var}: {err}");
    }
}

#[test]
fn the_shipped_example_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../snakepit.example.toml");
    let cfg = AppConfig::load(Some(&path), env(&[])).unwrap();
    assert!(!cfg.pools.is_empty());
}
