//! Serve your own Python adapter (`examples/custom_adapter/sentiment.py`): unary calls,
//! a streaming command, a session, and a Python exception with its traceback.
//!
//!     cargo run -p snakepit-examples --example custom_adapter

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use snakepit::{EventBus, Pool, PoolConfig, PythonConfig, Request, SessionOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let adapter_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("custom_adapter");
    let pool = Pool::start(
        PoolConfig {
            name: "sentiment".into(),
            adapter: "sentiment:Sentiment".into(),
            size: 2,
            python: PythonConfig {
                pythonpath: vec![adapter_dir],
                ..PythonConfig::default()
            },
            ..PoolConfig::default()
        },
        EventBus::default(),
    )
    .await?;
    println!("commands: {}", pool.commands().join(", "));

    let scored = pool
        .execute(Request::new(
            "score",
            json!({"text": "I love this great library"}),
        ))
        .await?;
    println!("score  -> {}", scored.value()?);

    let mut tokens = pool
        .execute_stream(Request::new("tokens", json!({"text": "one two three"})))
        .await?;
    while let Some(chunk) = tokens.next().await {
        println!("tokens -> {}", chunk?.json::<serde_json::Value>()?);
    }

    let session = pool.create_session(SessionOptions::default())?;
    for text in ["first", "second"] {
        let r = pool
            .execute(Request::new("remember", json!({"text": text})).session(&session.id))
            .await?;
        println!("remember -> {}", r.value()?);
    }

    match pool
        .execute(Request::new("strict", json!({"text": "  "})))
        .await
    {
        Ok(_) => return Err("strict accepted empty text".into()),
        Err(e) => {
            let py = e.python().ok_or("expected a Python error")?;
            println!(
                "strict -> {}: {}\n{}",
                py.python_type,
                py.message,
                py.traceback.trim_end()
            );
        }
    }
    pool.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
