//! Finding or creating the Python environment workers run in.
//!
//! Order: `python.interpreter` from config, else `SNAKEPIT_PYTHON`, else (with the
//! `bootstrap` feature; an error naming the two settings without it) a virtual
//! environment bootstrapped on first use (`python3 -m venv` + `pip install` of
//! `snakepit_bridge` with its OpenTelemetry extra, and its gRPC extra for pools on the
//! gRPC transport), reused afterwards. The bridge comes
//! from the source checkout this binary was built in, else from the copy compiled into
//! the binary (extracted under `~/.cache/snakepit/`); `SNAKEPIT_BRIDGE_SOURCE` overrides. The
//! bootstrap prints each step to stderr, holds a file lock so concurrent processes
//! (parallel tests) do not race, and records a stamp so a changed bridge package is
//! re-installed.

use std::fs;
#[cfg(feature = "bootstrap")]
use std::fs::File;
#[cfg(feature = "bootstrap")]
use std::io::Write;
use std::path::{Path, PathBuf};
#[cfg(feature = "bootstrap")]
use std::process::Command;

use crate::config::{PythonConfig, TransportKind};
use crate::error::StartError;

/// The bridge package, compiled into the binary, so an installed `snakepit` (no source
/// checkout next to it) can still bootstrap its workers' environment.
const EMBEDDED_BRIDGE: &[(&str, &str)] = &[
    ("pyproject.toml", include_str!("../python/pyproject.toml")),
    ("README.md", include_str!("../python/README.md")),
    (
        "snakepit_bridge/__init__.py",
        include_str!("../python/snakepit_bridge/__init__.py"),
    ),
    (
        "snakepit_bridge/__main__.py",
        include_str!("../python/snakepit_bridge/__main__.py"),
    ),
    (
        "snakepit_bridge/adapter.py",
        include_str!("../python/snakepit_bridge/adapter.py"),
    ),
    (
        "snakepit_bridge/aio.py",
        include_str!("../python/snakepit_bridge/aio.py"),
    ),
    (
        "snakepit_bridge/commands.py",
        include_str!("../python/snakepit_bridge/commands.py"),
    ),
    (
        "snakepit_bridge/channel.py",
        include_str!("../python/snakepit_bridge/channel.py"),
    ),
    (
        "snakepit_bridge/fork_server.py",
        include_str!("../python/snakepit_bridge/fork_server.py"),
    ),
    (
        "snakepit_bridge/hints.py",
        include_str!("../python/snakepit_bridge/hints.py"),
    ),
    (
        "snakepit_bridge/logs.py",
        include_str!("../python/snakepit_bridge/logs.py"),
    ),
    (
        "snakepit_bridge/metrics.py",
        include_str!("../python/snakepit_bridge/metrics.py"),
    ),
    (
        "snakepit_bridge/dispatch.py",
        include_str!("../python/snakepit_bridge/dispatch.py"),
    ),
    (
        "snakepit_bridge/errors.py",
        include_str!("../python/snakepit_bridge/errors.py"),
    ),
    (
        "snakepit_bridge/example.py",
        include_str!("../python/snakepit_bridge/example.py"),
    ),
    (
        "snakepit_bridge/pipe_server.py",
        include_str!("../python/snakepit_bridge/pipe_server.py"),
    ),
    (
        "snakepit_bridge/py.typed",
        include_str!("../python/snakepit_bridge/py.typed"),
    ),
    (
        "snakepit_bridge/server.py",
        include_str!("../python/snakepit_bridge/server.py"),
    ),
    (
        "snakepit_bridge/telemetry.py",
        include_str!("../python/snakepit_bridge/telemetry.py"),
    ),
    (
        "snakepit_bridge/worker.py",
        include_str!("../python/snakepit_bridge/worker.py"),
    ),
    (
        "snakepit_bridge/_proto/__init__.py",
        include_str!("../python/snakepit_bridge/_proto/__init__.py"),
    ),
    (
        "snakepit_bridge/_proto/worker_descriptor.py",
        include_str!("../python/snakepit_bridge/_proto/worker_descriptor.py"),
    ),
];

fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("snakepit")
}

/// Write the embedded bridge package under `root` (once per content version) and
/// return its directory.
pub fn extract_embedded_bridge(root: &Path) -> Result<PathBuf, StartError> {
    // FNV-1a of every file: a changed bridge lands in a new directory.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (name, text) in EMBEDDED_BRIDGE {
        for b in name.bytes().chain(text.bytes()) {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    let dir = root.join(format!("bridge-{}-{hash:016x}", env!("CARGO_PKG_VERSION")));
    if dir.join("pyproject.toml").is_file() {
        return Ok(dir);
    }
    let partial = root.join(format!(".bridge-{hash:016x}-{}", std::process::id()));
    for (name, text) in EMBEDDED_BRIDGE {
        let path = partial.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| {
                StartError::Environment(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        fs::write(&path, text).map_err(|e| {
            StartError::Environment(format!("cannot write {}: {e}", path.display()))
        })?;
    }
    // Rename into place: concurrent first runs never see a half-written package.
    match fs::rename(&partial, &dir) {
        Ok(()) => Ok(dir),
        Err(_) if dir.join("pyproject.toml").is_file() => {
            let _ = fs::remove_dir_all(&partial);
            Ok(dir)
        }
        Err(e) => Err(StartError::Environment(format!(
            "cannot move the bridge package into {}: {e}",
            dir.display()
        ))),
    }
}

/// The root of the source checkout this crate was built in (the workspace whose
/// `snakepit-core/` it is), if it was; a crate built from its package has none.
fn source_checkout() -> Option<PathBuf> {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest_dir.parent()?;
    // Cargo marks what it unpacks or checks out itself (registry sources, `git`
    // dependencies, `cargo install --git`) with `.cargo-ok`: not the user's checkout.
    if root.join(".cargo-ok").exists() || manifest_dir.join(".cargo-ok").exists() {
        return None;
    }
    let manifest = fs::read_to_string(root.join("Cargo.toml")).ok()?;
    (manifest.contains("[workspace]") && manifest.contains("\"snakepit-core\""))
        .then(|| root.canonicalize().unwrap_or_else(|_| root.to_path_buf()))
}

/// Where the `snakepit_bridge` sources of this build live in a source checkout
/// (`snakepit-core/python`), installed in editable mode so edits apply at once. A
/// crate built from its package uses the copy compiled in instead (never installing
/// from, or writing into, cargo's registry sources).
pub fn bundled_bridge_source() -> Option<PathBuf> {
    let dir = source_checkout()?.join("snakepit-core").join("python");
    dir.join("pyproject.toml").is_file().then_some(dir)
}

/// The default venv: `SNAKEPIT_VENV`, else `target/snakepit-venv` in a source checkout,
/// else `~/.cache/snakepit/venv-<version>`.
pub fn default_venv_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SNAKEPIT_VENV") {
        return PathBuf::from(dir);
    }
    if let Some(root) = source_checkout() {
        return root.join("target").join("snakepit-venv");
    }
    cache_dir().join(format!("venv-{}", env!("CARGO_PKG_VERSION")))
}

/// The interpreter a pool's workers use, bootstrapping the default venv if needed (for
/// the default, pipe, transport). Blocking (it may run pip); call it from
/// `spawn_blocking` in async code.
pub fn resolve_interpreter(cfg: &PythonConfig) -> Result<PathBuf, StartError> {
    resolve_interpreter_for(cfg, TransportKind::Pipe)
}

/// [`resolve_interpreter`] for workers on `transport`: a bootstrapped venv gets the
/// bridge's extras that transport needs ([`bootstrap_extras`]).
pub fn resolve_interpreter_for(
    cfg: &PythonConfig,
    transport: TransportKind,
) -> Result<PathBuf, StartError> {
    if let Some(p) = &cfg.interpreter {
        return check_interpreter(p, "python.interpreter");
    }
    if let Some(p) = std::env::var_os("SNAKEPIT_PYTHON") {
        return check_interpreter(Path::new(&p), "SNAKEPIT_PYTHON");
    }
    bootstrap_default(bootstrap_extras(transport))
}

/// The extras of `snakepit_bridge` a bootstrapped venv installs for workers on
/// `transport`: `otel` always (the workers' OpenTelemetry SDK), and `grpc` (grpcio)
/// only for the gRPC transport — pipe workers never import it. A venv's extras only
/// grow: one bootstrapped for gRPC keeps grpcio when later pools use pipes.
pub fn bootstrap_extras(transport: TransportKind) -> &'static [&'static str] {
    match transport {
        TransportKind::Pipe => &["otel"],
        TransportKind::Grpc => &["otel", "grpc"],
    }
}

/// No interpreter named: create (or reuse) the default venv with the bridge installed.
#[cfg(feature = "bootstrap")]
fn bootstrap_default(extras: &[&str]) -> Result<PathBuf, StartError> {
    // SNAKEPIT_BRIDGE_SOURCE: a directory with the bridge's pyproject.toml, or
    // "embedded" for the copy compiled into this binary.
    let src = match std::env::var("SNAKEPIT_BRIDGE_SOURCE").ok().as_deref() {
        Some("embedded") => extract_embedded_bridge(&cache_dir())?,
        Some(dir) => PathBuf::from(dir),
        None => match bundled_bridge_source() {
            Some(src) => src,
            None => extract_embedded_bridge(&cache_dir())?,
        },
    };
    ensure_venv(&default_venv_dir(), &src, extras)
}

/// Without the `bootstrap` feature a library never runs pip on its own.
#[cfg(not(feature = "bootstrap"))]
fn bootstrap_default(_extras: &[&str]) -> Result<PathBuf, StartError> {
    Err(StartError::Environment(
        "no Python for the workers: set python.interpreter (or SNAKEPIT_PYTHON) to a Python \
         3.9+ with snakepit_bridge installed (`pip install` the directory \
         python_env::extract_embedded_bridge writes), or enable the `bootstrap` feature to \
         create a virtual environment on first use"
            .into(),
    ))
}

fn check_interpreter(path: &Path, source: &str) -> Result<PathBuf, StartError> {
    if path.is_file() || path.components().count() == 1 {
        Ok(path.to_path_buf())
    } else {
        Err(StartError::Environment(format!(
            "{source} points to {}, which does not exist",
            path.display()
        )))
    }
}

#[cfg(feature = "bootstrap")]
fn venv_python(venv: &Path) -> PathBuf {
    venv.join("bin").join("python")
}

#[cfg(feature = "bootstrap")]
/// What an environment was made from: the bridge sources, their pyproject.toml, and
/// the extras installed. A different source or pyproject means re-install; missing
/// extras are added to the installed ones.
#[derive(Debug, PartialEq)]
struct Stamp {
    source: String,
    extras: std::collections::BTreeSet<String>,
}

#[cfg(feature = "bootstrap")]
impl Stamp {
    fn wanted(bridge_src: &Path, extras: &[&str]) -> Stamp {
        let pyproject = fs::read_to_string(bridge_src.join("pyproject.toml")).unwrap_or_default();
        // FNV-1a: stable across runs and Rust versions, unlike DefaultHasher.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in pyproject.bytes() {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        Stamp {
            source: format!("{} pyproject={hash:016x}", bridge_src.display()),
            extras: extras.iter().map(|e| e.to_string()).collect(),
        }
    }

    fn read(path: &Path) -> Option<Stamp> {
        Stamp::read_str(&fs::read_to_string(path).ok()?)
    }

    fn read_str(text: &str) -> Option<Stamp> {
        let mut lines = text.lines();
        let source = lines.next()?.strip_prefix("source=")?.to_string();
        let extras = lines.next()?.strip_prefix("extras=")?;
        Some(Stamp {
            source,
            extras: extras
                .split(',')
                .filter(|e| !e.is_empty())
                .map(String::from)
                .collect(),
        })
    }

    fn render(&self) -> String {
        let extras: Vec<&str> = self.extras.iter().map(String::as_str).collect();
        format!("source={}\nextras={}\n", self.source, extras.join(","))
    }

    /// True when an environment stamped `self` serves what `wanted` asks for.
    fn covers(&self, wanted: &Stamp) -> bool {
        self.source == wanted.source && wanted.extras.is_subset(&self.extras)
    }
}

#[cfg(feature = "bootstrap")]
/// Create (or reuse) a venv at `venv` with `snakepit_bridge[extras]` installed from
/// `bridge_src` in editable mode. Returns the venv's python.
pub fn ensure_venv(venv: &Path, bridge_src: &Path, extras: &[&str]) -> Result<PathBuf, StartError> {
    let env_err = |what: &str, e: &dyn std::fmt::Display| {
        StartError::Environment(format!("{what} ({}): {e}", venv.display()))
    };
    let python = venv_python(venv);
    let stamp_path = venv.join(".snakepit-stamp");
    let mut wanted = Stamp::wanted(bridge_src, extras);
    let is_current =
        || python.is_file() && Stamp::read(&stamp_path).is_some_and(|s| s.covers(&wanted));
    if is_current() {
        return Ok(python);
    }

    if let Some(parent) = venv.parent() {
        fs::create_dir_all(parent).map_err(|e| env_err("cannot create the venv's parent", &e))?;
    }
    let lock_path = venv.with_extension("lock");
    let lock = File::create(&lock_path).map_err(|e| env_err("cannot create lock file", &e))?;
    lock.lock()
        .map_err(|e| env_err("cannot lock the venv", &e))?;
    // Another process may have finished the job while we waited for the lock.
    if is_current() {
        return Ok(python);
    }
    // Keep extras installed earlier from the same sources (tests add `dev`).
    if let Some(old) = Stamp::read(&stamp_path).filter(|s| s.source == wanted.source) {
        wanted.extras.extend(old.extras);
    }

    let base = std::env::var("SNAKEPIT_BASE_PYTHON").unwrap_or_else(|_| "python3".into());
    let extras: Vec<&str> = wanted.extras.iter().map(String::as_str).collect();
    let spec = if extras.is_empty() {
        bridge_src.display().to_string()
    } else {
        format!("{}[{}]", bridge_src.display(), extras.join(","))
    };
    let mut err = std::io::stderr();
    if !python.is_file() {
        let _ = writeln!(
            err,
            "snakepit: [1/2] creating the workers' Python environment in {} (first run only)",
            venv.display()
        );
        run(
            Command::new(&base).args(["-m", "venv"]).arg(venv),
            "python3 -m venv",
        )?;
    }
    let _ = writeln!(
        err,
        "snakepit: [2/2] installing snakepit_bridge[{}] and its dependencies with pip",
        extras.join(",")
    );
    run(
        Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--progress-bar",
            "off",
            "-e",
            &spec,
        ]),
        "pip install",
    )?;
    fs::write(&stamp_path, wanted.render()).map_err(|e| env_err("cannot write stamp", &e))?;
    let _ = writeln!(
        err,
        "snakepit: Python environment ready ({})",
        python.display()
    );
    Ok(python)
}

#[cfg(feature = "bootstrap")]
fn run(cmd: &mut Command, what: &str) -> Result<(), StartError> {
    // pip's own output goes to our stderr (stdout stays the program's): it is the
    // visible progress.
    use std::os::fd::AsFd;
    let to_stderr = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map(std::process::Stdio::from)
        .unwrap_or_else(|_| std::process::Stdio::inherit());
    let status = cmd
        .stdout(to_stderr)
        .stderr(std::process::Stdio::inherit())
        .status()
        .map_err(|e| StartError::Environment(format!("cannot run {what}: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(StartError::Environment(format!(
            "{what} failed ({status}); see its output above. Is the package index reachable? \
             Or set python.interpreter to a Python that already has snakepit_bridge"
        )))
    }
}

#[cfg(all(test, feature = "bootstrap"))]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_bridge_is_the_whole_package_byte_for_byte() {
        let src = bundled_bridge_source().expect("tests run in a checkout");
        let mut on_disk: Vec<String> = Vec::new();
        for dir in ["snakepit_bridge", "snakepit_bridge/_proto"] {
            for entry in fs::read_dir(src.join(dir)).unwrap().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.ends_with(".py") {
                    on_disk.push(format!("{dir}/{name}"));
                }
            }
        }
        on_disk.sort();
        let mut embedded: Vec<String> = EMBEDDED_BRIDGE
            .iter()
            .map(|(n, _)| n.to_string())
            .filter(|n| n.ends_with(".py"))
            .collect();
        embedded.sort();
        assert_eq!(embedded, on_disk, "add new bridge files to EMBEDDED_BRIDGE");

        let tmp = std::env::temp_dir().join(format!("snakepit-extract-{}", std::process::id()));
        let dir = extract_embedded_bridge(&tmp).unwrap();
        for (name, _) in EMBEDDED_BRIDGE {
            assert_eq!(
                fs::read(dir.join(name)).unwrap(),
                fs::read(src.join(name)).unwrap(),
                "{name}"
            );
        }
        assert_eq!(
            extract_embedded_bridge(&tmp).unwrap(),
            dir,
            "extracted once"
        );
        let _ = fs::remove_dir_all(tmp);
    }

    #[test]
    fn stamps_cover_subsets_of_extras_from_the_same_source() {
        let src = Path::new("/nonexistent/python");
        let both = Stamp::wanted(src, &["otel", "dev"]);
        let otel = Stamp::wanted(src, &["otel"]);
        assert!(both.covers(&otel));
        assert!(!otel.covers(&both));
        let round_trip = Stamp::read_str(&both.render());
        assert_eq!(round_trip, Some(both));
        let other = Stamp::wanted(Path::new("/elsewhere"), &["otel"]);
        assert!(!other.covers(&otel));
    }

    #[test]
    fn grpc_workers_get_the_grpc_extra_and_pipe_workers_do_not() {
        assert_eq!(bootstrap_extras(TransportKind::Pipe), ["otel"]);
        assert_eq!(bootstrap_extras(TransportKind::Grpc), ["otel", "grpc"]);
        let src = Path::new("/nonexistent/python");
        let grpc = Stamp::wanted(src, bootstrap_extras(TransportKind::Grpc));
        let pipe = Stamp::wanted(src, bootstrap_extras(TransportKind::Pipe));
        assert!(
            grpc.covers(&pipe),
            "a venv made for gRPC serves pipe workers"
        );
        assert!(!pipe.covers(&grpc), "one made for pipes gets grpcio added");
    }
}
