//! Start a pool of the bundled example adapter, call every example command, print the
//! results and the pool's stats. Bootstraps the workers' Python environment on first run.
//!
//!     cargo run -p snakepit-core --example quickstart

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use snakepit_core::{EventBus, Pattern, Pool, PoolConfig, Request, SessionOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,snakepit_core=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();

    let events = EventBus::default();
    // Print lifecycle events as they happen (requests are printed below instead).
    let _printer = events.attach(
        "quickstart",
        "snakepit.pool.*,snakepit.worker.*,snakepit.session.*".parse::<Pattern>()?,
        |ev| println!("  event  {}", ev.to_json()),
    );

    println!("starting a pool of 2 workers (adapter snakepit_bridge.example:ExampleAdapter)...");
    let pool = Pool::start(
        PoolConfig {
            size: 2,
            max_memory_mb: 200,
            memory_check_interval_ms: 200,
            ..PoolConfig::default()
        },
        events,
    )
    .await?;
    println!("commands: {}", pool.commands().join(", "));

    let calls = [
        ("ping", json!({})),
        ("echo", json!({"hello": "world", "n": [1, 2, 3]})),
        ("sleep", json!({"ms": 20})),
        ("spin", json!({"ms": 5})),
        ("alloc", json!({"mb": 16})),
        ("describe", json!({})),
        (
            "fail",
            json!({"type": "ValueError", "message": "bad input"}),
        ),
        ("no_such_command", json!({})),
    ];
    for (command, args) in calls {
        match pool.execute(Request::new(command, args)).await {
            Ok(resp) => {
                let text = String::from_utf8_lossy(&resp.result);
                let shown: String = text.chars().take(100).collect();
                println!(
                    "ok     {command:<16} {:>7.2} ms on {}: {shown}",
                    resp.served.duration.as_secs_f64() * 1000.0,
                    resp.served.worker_id
                );
            }
            Err(err) => println!("error  {command:<16} [{}] {err}", err.error_type()),
        }
    }

    let mut stream = pool
        .execute_stream(Request::new("stream", json!({"n": 3, "delay_ms": 10})))
        .await?;
    while let Some(chunk) = stream.next().await {
        println!(
            "chunk  stream           {}",
            String::from_utf8_lossy(&chunk?.data)
        );
    }

    let session = pool.create_session(SessionOptions {
        metadata: json!({"user": "demo", "api_token": "never printed"}),
        ttl: Some(Duration::from_secs(60)),
        ..Default::default()
    })?;
    pool.execute(Request::new("session_put", json!({"key": "k", "value": 1})).session(&session.id))
        .await?;
    let got = pool
        .execute(Request::new("session_get", json!({})).session(&session.id))
        .await?;
    println!("ok     session_get      {}", got.value()?);
    pool.close_session(&session.id).await?;

    match pool
        .execute(Request::new("hang", json!({})).timeout(Duration::from_millis(300)))
        .await
    {
        Ok(_) => println!("hang returned?"),
        Err(err) => println!("error  hang             [{}] {err}", err.error_type()),
    }
    match pool
        .execute(Request::new("crash", json!({"code": 3})))
        .await
    {
        Ok(_) => println!("crash returned?"),
        Err(err) => println!("error  crash            [{}] {err}", err.error_type()),
    }
    // The pool replaces both workers; give it a moment, then show where it stands.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stats = pool.stats();
    println!("\nstats: {}", serde_json::to_string_pretty(&stats)?);
    pool.shutdown(Duration::from_secs(5)).await;
    println!("pool stopped");
    Ok(())
}
