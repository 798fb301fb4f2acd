//! The JSON Schema of scenario files (`agentdrill schema`), generated from
//! the scenario types, so that editors can check files as people type
//! (e.g. with taplo or Even Better TOML: `#:schema ./scenario.schema.json`).

use serde_json::{Value, json};

use crate::drill::limits;
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
        bound_numbers(obj);
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

/// The schema of live scenario files (`mode = "live"`).
pub fn live_schema() -> Value {
    let generator = schemars::generate::SchemaSettings::draft2020_12().for_deserialize().into_generator();
    let mut v = generator.into_root_schema_for::<crate::live::scenario::LiveScenario>().to_value();
    if let Some(obj) = v.as_object_mut() {
        obj.insert("title".into(), json!("agentdrill live scenario"));
        obj.insert(
            "description".into(),
            json!("A live drill (mode = \"live\"): the stack's processes, how jobs are submitted, faults on real things. See the README."),
        );
    }
    v
}

/// The live schema, pretty-printed.
pub fn render_live() -> String {
    serde_json::to_string_pretty(&live_schema()).expect("a JSON value serialises")
}

/// The schema, pretty-printed.
pub fn render() -> String {
    serde_json::to_string_pretty(&scenario_schema()).expect("a JSON value serialises")
}

/// The numeric limits of [`limits`] as `minimum`/`maximum` on the fields
/// they bound (type, field, minimum, maximum), so that an editor flags
/// them as the file is typed. `validate` checks them all the same.
const NUMBER_BOUNDS: &[(&str, &str, u64, u64)] = &[
    ("StackSpec", "workers", 1, limits::MAX_WORKERS as u64),
    ("Workload", "tasks", 1, limits::MAX_TASKS as u64),
    ("Policy", "lease_ms", 1, limits::MAX_SPAN_MS),
    ("FailoverSpec", "failure_threshold", 1, limits::MAX_FAILURE_THRESHOLD as u64),
    ("BreakerConfig", "failure_threshold", 1, limits::MAX_FAILURE_THRESHOLD as u64),
    ("BreakerConfig", "window_ms", 0, limits::MAX_SPAN_MS),
    ("BreakerConfig", "open_ms", 0, limits::MAX_SPAN_MS),
    ("VectorSpec", "restore_per_point_us", 0, limits::MAX_PER_UNIT_US),
    ("NetworkSpec", "intra_region_latency_us", 0, limits::MAX_LINK_US),
    ("NetworkSpec", "intra_region_jitter_us", 0, limits::MAX_LINK_US),
    ("NetworkSpec", "cross_region_latency_us", 0, limits::MAX_LINK_US),
    ("NetworkSpec", "cross_region_jitter_us", 0, limits::MAX_LINK_US),
    ("QueueConfig", "ack_wait_ms", limits::MIN_ACK_WAIT_MS, limits::MAX_SPAN_MS),
    ("QueueConfig", "dedupe_window_ms", 0, limits::MAX_SPAN_MS),
    ("ProviderConfig", "timeout_ms", 1, limits::MAX_SPAN_MS),
    ("ProviderConfig", "base_latency_ms", 0, limits::MAX_SPAN_MS),
    ("ProviderConfig", "cold_extra_latency_ms", 0, limits::MAX_SPAN_MS),
    ("ProviderConfig", "cache_ttl_ms", 0, limits::MAX_SPAN_MS),
    ("ProviderConfig", "latency_per_output_token_us", 0, limits::MAX_PER_UNIT_US),
    ("ProviderConfig", "max_retries", 0, limits::MAX_RETRIES as u64),
];

/// Writes [`NUMBER_BOUNDS`] into the schema's definitions.
fn bound_numbers(root: &mut serde_json::Map<String, Value>) {
    let Some(defs) = root.get_mut("$defs").and_then(Value::as_object_mut) else { return };
    for &(ty, field, min, max) in NUMBER_BOUNDS {
        let Some(prop) = defs.get_mut(ty).and_then(|d| d.pointer_mut(&format!("/properties/{field}"))) else {
            continue;
        };
        if let Some(p) = prop.as_object_mut() {
            p.insert("minimum".into(), json!(min));
            p.insert("maximum".into(), json!(max));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_numeric_limit_is_in_the_schema() {
        let schema = scenario_schema();
        for &(ty, field, min, max) in NUMBER_BOUNDS {
            let p =
                schema.pointer(&format!("/$defs/{ty}/properties/{field}")).unwrap_or_else(|| panic!("{ty}.{field}"));
            assert_eq!(p["minimum"], json!(min), "{ty}.{field}");
            assert_eq!(p["maximum"], json!(max), "{ty}.{field}");
        }
    }
}
