//! Gathering the commands' JSON Schemas into one OpenAPI document: each schema is
//! self-contained (its named types under its own top-level `"$defs"`, referenced as
//! `"#/$defs/Name"`), while an OpenAPI document keeps named types once, in
//! `components/schemas`. [`Components::hoist`] moves a schema's `$defs` there and
//! rewrites its references (at any depth) to `"#/components/schemas/Name"`.
//!
//! Identical types from different commands share one entry; a different type under a
//! name already taken gets the next free name (`Name_2`, `Name_3`, …) and the
//! references of the schema it came with point to that. "Identical" is judged after
//! the rewriting, so two types that look alike but refer to different types are kept
//! apart.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

const LOCAL_DEFS: &str = "#/$defs/";
const COMPONENTS: &str = "#/components/schemas/";

/// The `components/schemas` of a document being built.
#[derive(Debug, Default)]
pub(super) struct Components {
    schemas: BTreeMap<String, Value>,
}

impl Components {
    /// Add a named schema of the document's own (the error model): kept as given.
    pub(super) fn define(&mut self, name: &str, schema: Value) {
        self.schemas.insert(name.to_string(), schema);
    }

    /// The schemas, for `components.schemas`.
    pub(super) fn into_map(self) -> Map<String, Value> {
        self.schemas.into_iter().collect()
    }

    /// `schema` with its `$defs` moved into the components and its references to them
    /// rewritten.
    pub(super) fn hoist(&mut self, mut schema: Value) -> Value {
        let defs = match schema.as_object_mut().and_then(|o| o.remove("$defs")) {
            Some(Value::Object(defs)) => defs,
            // A `$defs` that is not an object defines nothing: dropped.
            Some(_) | None => Map::new(),
        };
        let names = self.place(&defs);
        for (name, def) in &defs {
            let target = &names[name];
            let rewritten = rewrite(def.clone(), &names);
            self.schemas.entry(target.clone()).or_insert(rewritten);
        }
        rewrite(schema, &names)
    }

    /// Where each of `defs` goes: its own (sanitized) name, or the first `Name_k` that is
    /// free or holds the very same type. A name only moves forward, so this settles:
    /// a type whose references moved may itself differ from what it matched before.
    fn place(&self, defs: &Map<String, Value>) -> BTreeMap<String, String> {
        let mut names = BTreeMap::new();
        let mut tried: BTreeMap<&str, usize> = BTreeMap::new();
        for name in defs.keys() {
            names.insert(name.clone(), component_name(name));
            tried.insert(name, 1);
        }
        // Two local names that sanitize alike must not share an entry either.
        let mut changed = true;
        while changed {
            changed = false;
            for (name, def) in defs {
                loop {
                    let target = names[name].clone();
                    let taken_here = names.iter().any(|(n, t)| n != name && *t == target);
                    let fits = !taken_here
                        && self
                            .schemas
                            .get(&target)
                            .is_none_or(|existing| *existing == rewrite(def.clone(), &names));
                    if fits {
                        break;
                    }
                    let k = tried.entry(name).or_insert(1);
                    *k += 1;
                    names.insert(name.clone(), format!("{}_{k}", component_name(name)));
                    changed = true;
                }
            }
        }
        names
    }
}

/// A component name OpenAPI accepts (`^[a-zA-Z0-9.\-_]+$`): other characters become `_`.
fn component_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() {
        "_".into()
    } else {
        cleaned
    }
}

/// `value` with every `"$ref": "#/$defs/Name…"` pointing into the components under the
/// name `names` gives it (a reference to a type not defined is left as it is).
fn rewrite(value: Value, names: &BTreeMap<String, String>) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => {
                        let r = rewrite_ref(&r, names).unwrap_or(r);
                        (k, Value::String(r))
                    }
                    (_, v) => (k, rewrite(v, names)),
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(|v| rewrite(v, names)).collect()),
        other => other,
    }
}

fn rewrite_ref(r: &str, names: &BTreeMap<String, String>) -> Option<String> {
    let rest = r.strip_prefix(LOCAL_DEFS)?;
    let (escaped, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    // A JSON Pointer segment: `~1` is `/`, `~0` is `~`.
    let name = escaped.replace("~1", "/").replace("~0", "~");
    let target = names.get(&name)?;
    Some(format!("{COMPONENTS}{target}{tail}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn point() -> Value {
        json!({"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}},
               "required": ["x", "y"]})
    }

    #[test]
    fn defs_move_to_the_components_and_references_follow_at_any_depth() {
        let mut c = Components::default();
        let schema = json!({
            "type": "object",
            "properties": {
                "a": {"$ref": "#/$defs/Point"},
                "path": {"type": "array", "items": {"anyOf": [{"$ref": "#/$defs/Point"}, {"type": "null"}]}},
                "x": {"$ref": "#/$defs/Point/properties/x"},
                "other": {"$ref": "https://example.com/schema.json"}
            },
            "$defs": {"Point": point()}
        });
        let hoisted = c.hoist(schema);
        assert!(hoisted.get("$defs").is_none());
        assert_eq!(
            hoisted["properties"]["a"]["$ref"],
            "#/components/schemas/Point"
        );
        assert_eq!(
            hoisted["properties"]["path"]["items"]["anyOf"][0]["$ref"],
            "#/components/schemas/Point"
        );
        assert_eq!(
            hoisted["properties"]["x"]["$ref"],
            "#/components/schemas/Point/properties/x"
        );
        assert_eq!(
            hoisted["properties"]["other"]["$ref"], "https://example.com/schema.json",
            "not a local type: untouched"
        );
        assert_eq!(c.into_map()["Point"], point());
    }

    #[test]
    fn the_same_type_from_two_commands_is_one_entry() {
        let mut c = Components::default();
        for _ in 0..2 {
            let hoisted = c.hoist(json!({"$ref": "#/$defs/Point", "$defs": {"Point": point()}}));
            assert_eq!(hoisted["$ref"], "#/components/schemas/Point");
        }
        assert_eq!(c.into_map().len(), 1);
    }

    #[test]
    fn a_different_type_under_a_taken_name_gets_the_next_free_name() {
        let mut c = Components::default();
        c.hoist(json!({"$ref": "#/$defs/Point", "$defs": {"Point": point()}}));
        let point3d = json!({"type": "object", "properties": {"z": {"type": "number"}}});
        let hoisted = c.hoist(json!({
            "properties": {"p": {"$ref": "#/$defs/Point"}, "q": {"items": {"$ref": "#/$defs/Point"}}},
            "$defs": {"Point": point3d}
        }));
        assert_eq!(
            hoisted["properties"]["p"]["$ref"],
            "#/components/schemas/Point_2"
        );
        assert_eq!(
            hoisted["properties"]["q"]["items"]["$ref"],
            "#/components/schemas/Point_2"
        );
        // A third command with the first Point again still finds it; a third kind
        // skips past both.
        let again = c.hoist(json!({"$ref": "#/$defs/Point", "$defs": {"Point": point()}}));
        assert_eq!(again["$ref"], "#/components/schemas/Point");
        let third =
            c.hoist(json!({"$ref": "#/$defs/Point", "$defs": {"Point": {"type": "string"}}}));
        assert_eq!(third["$ref"], "#/components/schemas/Point_3");
        let map = c.into_map();
        assert_eq!(map["Point"], point());
        assert_eq!(map["Point_2"], point3d);
        assert_eq!(map["Point_3"], json!({"type": "string"}));
    }

    #[test]
    fn types_that_look_alike_but_refer_to_different_types_stay_apart() {
        let mut c = Components::default();
        let line = json!({"type": "array", "items": {"$ref": "#/$defs/Point"}});
        c.hoist(json!({"$ref": "#/$defs/Line", "$defs": {"Line": line.clone(), "Point": point()}}));
        // Same `Line` text, but its Point is another type: both are renamed, and the
        // renamed Line refers to the renamed Point.
        let hoisted = c.hoist(json!({
            "$ref": "#/$defs/Line",
            "$defs": {"Line": line, "Point": {"type": "string"}}
        }));
        assert_eq!(hoisted["$ref"], "#/components/schemas/Line_2");
        let map = c.into_map();
        assert_eq!(map["Line"]["items"]["$ref"], "#/components/schemas/Point");
        assert_eq!(
            map["Line_2"]["items"]["$ref"],
            "#/components/schemas/Point_2"
        );
        assert_eq!(map["Point_2"], json!({"type": "string"}));
    }

    #[test]
    fn recursive_types_and_odd_names_are_handled() {
        let mut c = Components::default();
        let node = json!({"type": "object", "properties": {
            "children": {"type": "array", "items": {"$ref": "#/$defs/Tree[int]"}}}});
        let hoisted = c.hoist(json!({"$ref": "#/$defs/Tree[int]", "$defs": {"Tree[int]": node}}));
        assert_eq!(hoisted["$ref"], "#/components/schemas/Tree_int_");
        let map = c.into_map();
        assert_eq!(
            map["Tree_int_"]["properties"]["children"]["items"]["$ref"],
            "#/components/schemas/Tree_int_"
        );
    }

    #[test]
    fn a_schema_without_defs_is_unchanged() {
        let mut c = Components::default();
        let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}}});
        assert_eq!(c.hoist(schema.clone()), schema);
        assert!(c.into_map().is_empty());
    }
}
