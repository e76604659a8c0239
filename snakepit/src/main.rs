//! The `snakepit` command line: `serve`, `exec`, `bench`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use snakepit::commands::{self, BenchOptions, ExecOptions};
use snakepit::config::AppConfig;

#[derive(Parser)]
#[command(
    name = "snakepit",
    version,
    about = "Pools of long-lived Python workers, served over HTTP and observable."
)]
struct Cli {
    /// Configuration file (default: $SNAKEPIT_CONFIG, else ./snakepit.toml if present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pools and the HTTP server (execute API, probes, /metrics, /dashboard).
    Serve {
        /// Listen address (overrides server.listen).
        #[arg(long)]
        listen: Option<String>,
        /// Validate the configuration and exit.
        #[arg(long)]
        check_config: bool,
    },
    /// Run one command on a fresh worker and print its result.
    Exec {
        /// The adapter command, e.g. ping.
        command: String,
        /// Keyword arguments as a JSON object, e.g. '{"ms": 10}'.
        #[arg(long)]
        args: Option<String>,
        #[arg(long)]
        pool: Option<String>,
        #[arg(long)]
        timeout_ms: Option<u64>,
        /// Call a generator command and print each chunk.
        #[arg(long)]
        stream: bool,
    },
    /// Drive load through a pool and print a latency/throughput table.
    Bench {
        #[arg(long, default_value = "ping")]
        command: String,
        #[arg(long)]
        args: Option<String>,
        #[arg(long)]
        pool: Option<String>,
        /// Requests in flight, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,16")]
        concurrency: Vec<usize>,
        /// Seconds per concurrency level.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
    },
}

fn config_path(flag: Option<PathBuf>) -> Option<PathBuf> {
    flag.or_else(|| std::env::var_os("SNAKEPIT_CONFIG").map(PathBuf::from))
        .or_else(|| {
            let local = PathBuf::from("snakepit.toml");
            local.is_file().then_some(local)
        })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let path = config_path(cli.config);
    let mut env: Vec<(String, String)> = std::env::vars().collect();
    if let Command::Serve {
        listen: Some(addr), ..
    } = &cli.command
    {
        // Raw: a string key takes the variable's text as it is (quotes would be kept).
        env.push(("SNAKEPIT_SERVER__LISTEN".into(), addr.clone()));
    }
    let mut cfg = match AppConfig::load(path.as_deref(), env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("snakepit: {e}");
            return ExitCode::from(2);
        }
    };
    if let Command::Serve {
        check_config: true, ..
    } = &cli.command
    {
        println!(
            "configuration OK: {} pool(s) [{}], listen {}",
            cfg.pools.len(),
            cfg.pools
                .iter()
                .map(|p| format!("{} x{} {}", p.name, p.size, p.adapter))
                .collect::<Vec<_>>()
                .join("; "),
            cfg.server.listen
        );
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("snakepit: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve { .. } => snakepit::serve::serve(cfg).await.map_err(|e| e.to_string()),
            Command::Exec {
                command,
                args,
                pool,
                timeout_ms,
                stream,
            } => {
                // The result goes to stdout: keep log lines and exports out of the way.
                cfg.telemetry.enabled = false;
                commands::exec(
                    cfg,
                    ExecOptions {
                        command,
                        args,
                        pool,
                        timeout_ms,
                        stream,
                    },
                )
                .await
            }
            Command::Bench {
                command,
                args,
                pool,
                concurrency,
                seconds,
            } => {
                cfg.telemetry.enabled = false;
                commands::bench(
                    cfg,
                    BenchOptions {
                        command,
                        args,
                        pool,
                        concurrency,
                        seconds,
                    },
                )
                .await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("snakepit: {e}");
            ExitCode::FAILURE
        }
    }
}
