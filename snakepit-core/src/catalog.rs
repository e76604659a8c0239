//! The command catalog: what an adapter's commands take and return, as its first
//! worker describes them (`Describe`). Names, whether a command streams or is async,
//! its docstring and parameter names, and JSON Schemas of its arguments and result
//! built by the worker from the type hints. The pool learns it once, at the first
//! worker's start ([`crate::Pool::command_specs`]); the HTTP API serves it as
//! `/v1/commands` and `/openapi.json`.
//!
//! A schema that does not parse is dropped with a warning (the command itself still
//! works): a worker's description is never a reason to fail.

use serde::Serialize;
use serde_json::Value;

use crate::proto;

/// One command of an adapter, as its worker described it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CommandSpec {
    /// The command's name (what `Request::new` takes).
    pub name: String,
    /// A generator (sync or async): called with `execute_stream`.
    pub streaming: bool,
    /// An `async def` command or async generator: it runs on the worker's event loop
    /// and is cancelled inside Python at its deadline (the worker is kept).
    #[serde(rename = "async")]
    pub is_async: bool,
    /// Its docstring (empty without one).
    pub doc: String,
    /// Parameter names, in declaration order.
    pub params: Vec<String>,
    /// The arguments as a JSON Schema (2020-12) object schema, self-contained: named
    /// types live under its own `"$defs"`, referenced as `"#/$defs/Name"`. `None` from a
    /// worker that does not describe schemas (or sent one that does not parse).
    pub args_schema: Option<Value>,
    /// The result's JSON Schema (each chunk's, for a streaming command); `None` when the
    /// return type is not hinted.
    pub returns_schema: Option<Value>,
}

impl CommandSpec {
    /// The spec of a described command; a malformed schema becomes `None` (logged).
    pub(crate) fn from_proto(pool: &str, info: proto::CommandInfo) -> CommandSpec {
        let args_schema = parse_schema(pool, &info.name, "args", &info.args_schema_json);
        let returns_schema = parse_schema(pool, &info.name, "returns", &info.returns_schema_json);
        CommandSpec {
            name: info.name,
            streaming: info.streaming,
            is_async: info.is_async,
            doc: info.doc,
            params: info.params,
            args_schema,
            returns_schema,
        }
    }
}

/// The described commands sorted by name (a name described twice keeps its first).
pub(crate) fn from_describe(pool: &str, commands: Vec<proto::CommandInfo>) -> Vec<CommandSpec> {
    let mut specs: Vec<CommandSpec> = commands
        .into_iter()
        .map(|c| CommandSpec::from_proto(pool, c))
        .collect();
    specs.sort_by(|a, b| a.name.cmp(&b.name));
    specs.dedup_by(|later, first| later.name == first.name);
    specs
}

/// A JSON schema as the worker sent it: empty is none; anything but a JSON object is
/// dropped with a warning.
fn parse_schema(pool: &str, command: &str, which: &str, json: &str) -> Option<Value> {
    if json.trim().is_empty() {
        return None;
    }
    match serde_json::from_str::<Value>(json) {
        Ok(schema @ Value::Object(_)) => Some(schema),
        Ok(other) => {
            tracing::warn!(pool, command, which, schema = %other,
                "the worker described a schema that is not a JSON object; ignoring it");
            None
        }
        Err(e) => {
            tracing::warn!(pool, command, which, error = %e,
                "the worker described a schema that is not valid JSON; ignoring it");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn info(name: &str, args: &str, returns: &str) -> proto::CommandInfo {
        proto::CommandInfo {
            name: name.into(),
            streaming: false,
            params: vec!["x".into()],
            doc: "Doc.".into(),
            args_schema_json: args.into(),
            returns_schema_json: returns.into(),
            is_async: true,
        }
    }

    #[test]
    fn schemas_parse_and_malformed_ones_become_none() {
        let specs = from_describe(
            "p",
            vec![
                info("b", r#"{"type":"object"}"#, "not json"),
                info("a", "", "[1, 2]"),
                info("b", "{}", "{}"),
            ],
        );
        let names: Vec<_> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b"], "sorted, a repeated name kept once");
        assert_eq!(specs[0].args_schema, None, "empty: an older worker");
        assert_eq!(specs[0].returns_schema, None, "not an object");
        assert_eq!(specs[1].args_schema, Some(json!({"type": "object"})));
        assert_eq!(specs[1].returns_schema, None, "not JSON");
        assert!(specs[1].is_async);
    }

    #[test]
    fn serializes_with_the_apis_field_names() {
        let spec = CommandSpec::from_proto("p", info("a", "{}", ""));
        assert_eq!(
            serde_json::to_value(&spec).unwrap(),
            json!({"name": "a", "streaming": false, "async": true, "doc": "Doc.",
                   "params": ["x"], "args_schema": {}, "returns_schema": null})
        );
    }
}
