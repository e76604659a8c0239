use super::*;

#[test]
fn defaults_are_valid() {
    PoolConfig::default().validate().unwrap();
}

#[test]
fn errors_name_key_value_and_allowed() {
    let cfg = PoolConfig {
        size: 0,
        ..PoolConfig::named("ml")
    };
    let err = cfg.validate().unwrap_err();
    assert_eq!(err.key, "pools.ml.size");
    assert_eq!(err.value, "0");
    assert!(err.to_string().contains("1..=1024 workers"), "{err}");

    let cfg = PoolConfig {
        adapter: "no_colon".into(),
        ..PoolConfig::default()
    };
    assert_eq!(cfg.validate().unwrap_err().key, "pools.default.adapter");
}

#[test]
fn huge_values_are_refused_with_their_key_and_range() {
    let keys = [
        "size",
        "max_queue_size",
        "queue_timeout_ms",
        "request_timeout_ms",
        "startup_timeout_ms",
        "max_lifetime_secs",
        "max_memory_mb",
        "memory_check_interval_ms",
        "health_check_interval_ms",
        "health_check_timeout_ms",
        "stop_grace_ms",
        "busy_poll_us",
        "restart_backoff_initial_ms",
        "restart_backoff_max_ms",
        "restart_backoff_reset_secs",
        "max_payload_bytes",
        "max_response_bytes",
        "stats_window_secs",
        "python.rpc_threads",
        "sessions.default_ttl_secs",
        "sessions.cleanup_interval_ms",
        "sessions.max_sessions",
        "sessions.recycle_grace_secs",
    ];
    for key in keys {
        let json = match key.split_once('.') {
            Some((section, k)) => format!(r#"{{"{section}": {{"{k}": {}}}}}"#, u64::MAX),
            None => format!(r#"{{"{key}": {}}}"#, u64::MAX),
        };
        let cfg: PoolConfig = serde_json::from_str(&json).unwrap();
        let err = cfg.validate().expect_err(key);
        assert!(err.key.starts_with("pools.default."), "{key}: {err}");
        assert!(err.allowed.contains("..="), "{key}: {err}");
    }
    let cfg = PoolConfig {
        health_check_failures: u32::MAX,
        capacity_warning_percent: f64::INFINITY,
        ..PoolConfig::default()
    };
    assert_eq!(
        cfg.validate().unwrap_err().key,
        "pools.default.health_check_failures"
    );
}

#[test]
fn unknown_keys_are_rejected_with_their_name() {
    let err = serde_json::from_str::<PoolConfig>(r#"{"sise": 3}"#).unwrap_err();
    assert!(err.to_string().contains("sise"), "{err}");
    let cfg: PoolConfig = serde_json::from_str(r#"{"size": 3, "when_full": "wait"}"#).unwrap();
    assert_eq!(cfg.size, 3);
    assert_eq!(cfg.when_full, WhenFull::Wait);
}
