//! With no interpreter configured, a build without `bootstrap` never runs pip: it says
//! which setting names a Python and which feature would create one. (Its own test
//! binary: it clears `SNAKEPIT_PYTHON` for the process.)

use snakepit_core::python_env::resolve_interpreter;
use snakepit_core::PythonConfig;

#[test]
fn no_interpreter_and_no_bootstrap_is_a_clear_error() {
    if snakepit_core::FEATURES.contains(&"bootstrap") {
        // The bootstrap path is what every other suite uses; nothing to add here.
        return;
    }
    std::env::remove_var("SNAKEPIT_PYTHON");
    let err = resolve_interpreter(&PythonConfig::default())
        .expect_err("nothing to run without an interpreter or bootstrap");
    let e = err.to_string();
    assert!(e.contains("python.interpreter"), "{e}");
    assert!(e.contains("SNAKEPIT_PYTHON"), "{e}");
    assert!(e.contains("`bootstrap` feature"), "{e}");
}
