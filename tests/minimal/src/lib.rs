//! Nothing here: the tests in `tests/` use `snakepit-core` and `snakepit-otel` with
//! their default (empty or trimmed) feature sets.
