//! Create (or reuse) the workers' Python environment and print its interpreter path.
//! The test script uses it so tests and pools share one bootstrap code path.
//!
//!     cargo run -p snakepit-core --example bootstrap -- [extra,extra]

use snakepit_core::python_env::{bundled_bridge_source, default_venv_dir, ensure_venv};

fn main() {
    let extras_arg = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "otel".to_string());
    let extras: Vec<&str> = extras_arg.split(',').filter(|e| !e.is_empty()).collect();
    let Some(src) = bundled_bridge_source() else {
        eprintln!("error: no snakepit-core/python/ next to this build; run from a source checkout");
        std::process::exit(2);
    };
    match ensure_venv(&default_venv_dir(), &src, &extras) {
        Ok(python) => println!("{}", python.display()),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
