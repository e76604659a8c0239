//! The OpenAPI document's shape from described commands (the real validator runs on a
//! served document in `tests/adapter_api.rs`).

use super::*;

fn spec(name: &str, streaming: bool, args: Option<Value>, returns: Option<Value>) -> CommandSpec {
    CommandSpec {
        name: name.into(),
        streaming,
        is_async: false,
        doc: format!("Run {name}.\n\nMore about it."),
        params: vec![],
        args_schema: args,
        returns_schema: returns,
    }
}

fn point() -> Value {
    json!({"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}},
           "required": ["x", "y"]})
}

fn doc() -> Value {
    let distance_args = json!({"$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object", "required": ["a", "b"],
        "properties": {"a": {"$ref": "#/$defs/Point"}, "b": {"$ref": "#/$defs/Point"}},
        "$defs": {"Point": point()}});
    let default = vec![
        spec(
            "distance",
            false,
            Some(distance_args),
            Some(json!({"type": "number"})),
        ),
        spec(
            "ping",
            false,
            Some(json!({"type": "object", "properties": {}})),
            None,
        ),
        spec("stream", true, None, Some(json!({"type": "object"}))),
    ];
    let other = vec![spec(
        "odd name",
        false,
        Some(
            json!({"type": "object", "properties": {"p": {"$ref": "#/$defs/Point"}},
                    "$defs": {"Point": {"type": "string"}}}),
        ),
        None,
    )];
    let pools = [
        ("default", Some(default.as_slice())),
        ("b-2", Some(other.as_slice())),
        ("cold", None),
    ];
    build(pools.into_iter(), "x-correlation-id")
}

#[test]
fn one_operation_per_command_with_its_schemas() {
    let d = doc();
    assert_eq!(d["openapi"], "3.1.0");
    assert_eq!(d["info"]["version"], env!("CARGO_PKG_VERSION"));
    let op = &d["paths"]["/v1/pools/default/commands/distance"]["post"];
    assert_eq!(op["operationId"], "default__distance");
    assert_eq!(op["summary"], "Run distance.");
    let body = &op["requestBody"];
    assert_eq!(body["required"], true, "a and b are required");
    let args = &body["content"]["application/json"]["schema"];
    assert_eq!(
        args["properties"]["a"]["$ref"],
        "#/components/schemas/Point"
    );
    assert!(args.get("$defs").is_none() && args.get("$schema").is_none());
    let result = &op["responses"]["200"]["content"]["application/json"]["schema"];
    assert_eq!(result["properties"]["result"], json!({"type": "number"}));
    assert_eq!(
        op["responses"]["504"]["$ref"],
        "#/components/responses/E504"
    );
    assert_eq!(d["components"]["schemas"]["Point"], point());

    let ping = &d["paths"]["/v1/pools/default/commands/ping"]["post"];
    assert_eq!(ping["requestBody"]["required"], false, "nothing required");
    assert_eq!(
        ping["responses"]["200"]["content"]["application/json"]["schema"]["properties"]["result"],
        json!({}),
        "unhinted result"
    );
    let stream = &d["paths"]["/v1/pools/default/commands/stream"]["post"];
    let lines = &stream["responses"]["200"]["content"]["application/x-ndjson"]["schema"];
    assert_eq!(
        lines["oneOf"][0]["properties"]["chunk"],
        json!({"type": "object"})
    );
    assert_eq!(
        stream["requestBody"]["content"]["application/json"]["schema"],
        json!({"type": "object"}),
        "no schema described: any object"
    );
}

#[test]
fn names_are_made_safe_and_colliding_types_kept_apart() {
    let d = doc();
    let op = &d["paths"]["/v1/pools/b-2/commands/odd%20name"]["post"];
    assert_eq!(op["operationId"], "b_2__odd_name");
    assert_eq!(
        op["requestBody"]["content"]["application/json"]["schema"]["properties"]["p"]["$ref"],
        "#/components/schemas/Point_2"
    );
    assert_eq!(
        d["components"]["schemas"]["Point_2"],
        json!({"type": "string"})
    );
    let mut seen = Default::default();
    assert_eq!(unique_id(&mut seen, "a", "b"), "a__b");
    assert_eq!(unique_id(&mut seen, "a", "b"), "a__b_2");
}

#[test]
fn the_generic_routes_and_the_error_model_are_there() {
    let d = doc();
    for path in [
        "/v1/execute",
        "/v1/execute/stream",
        "/v1/sessions",
        "/v1/sessions/{id}",
        "/v1/commands",
    ] {
        assert!(d["paths"].get(path).is_some(), "{path}");
    }
    assert!(d["components"]["schemas"]["Error"].is_object());
    let cold = d["tags"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["name"] == "cold"))
        .cloned()
        .unwrap_or_default();
    assert!(
        cold["description"]
            .as_str()
            .is_some_and(|s| s.contains("not described")),
        "{cold}"
    );
    assert!(!d["paths"]
        .as_object()
        .is_some_and(|p| p.keys().any(|k| k.contains("/cold/"))));
}

#[test]
fn the_summary_is_the_docstrings_first_paragraph_even_when_it_wraps() {
    let mut wrapped = spec("score", false, None, None);
    wrapped.doc = "\nWeighted sum of `features`; the\nweights default to 1.\n\nMore.".into();
    let mut bare = spec("bare", false, None, None);
    bare.doc = String::new();
    let specs = [wrapped, bare];
    let d = build(
        [("default", Some(specs.as_slice()))].into_iter(),
        "x-correlation-id",
    );
    let paths = &d["paths"];
    assert_eq!(
        paths["/v1/pools/default/commands/score"]["post"]["summary"],
        "Weighted sum of `features`; the weights default to 1."
    );
    assert_eq!(
        paths["/v1/pools/default/commands/bare"]["post"]["summary"],
        "default: bare"
    );
}
