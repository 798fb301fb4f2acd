//! The JSON Schema of scenario files (`agentdrill schema`), generated from
//! the scenario types, so that editors can check files as people type
//! (e.g. with taplo or Even Better TOML: `#:schema ./scenario.schema.json`).

use serde_json::{Value, json};

use crate::drill::scenario::Scenario;

/// The schema as a JSON value (draft 2020-12).
pub fn scenario_schema() -> Value {
    let generator = schemars::generate::SchemaSettings::draft2020_12().for_deserialize().into_generator();
    let schema = generator.into_root_schema_for::<Scenario>();
    let mut v = schema.to_value();
    if let Some(obj) = v.as_object_mut() {
        obj.insert("title".into(), json!("agentdrill scenario"));
        obj.insert(
            "description".into(),
            json!("A drill: the tier the stack claims, the stack, the workload and the faults. See the README."),
        );
        // `include` is read by the loader before the scenario is built, so
        // it is not a field of `Scenario`.
        if let Some(props) = obj.get_mut("properties").and_then(Value::as_object_mut) {
            props.insert(
                "include".into(),
                json!({
                    "description": "Files merged under this one (its own keys win), relative to this file.",
                    "oneOf": [
                        { "type": "string" },
                        { "type": "array", "items": { "type": "string" } }
                    ]
                }),
            );
        }
    }
    v
}

/// The schema for a shared piece that other scenarios include: the same,
/// with no field required.
pub fn fragment_schema() -> Value {
    let mut v = scenario_schema();
    if let Some(obj) = v.as_object_mut() {
        obj.remove("required");
        obj.insert("title".into(), json!("agentdrill scenario fragment (for include)"));
    }
    v
}

/// The schema, pretty-printed.
pub fn render() -> String {
    serde_json::to_string_pretty(&scenario_schema()).expect("a JSON value serialises")
}
