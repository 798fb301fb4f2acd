//! The JSON Schema (`agentdrill schema`, and `schema --live` for live
//! scenarios) accepts every scenario of the catalogue, and refuses malformed ones. Offline: no remote references.

use std::path::{Path, PathBuf};

use agentdrill::drill::schema;

fn toml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("folder") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            toml_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "toml") {
            out.push(p);
        }
    }
}

fn as_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).expect("readable");
    let v: toml::Value = toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::to_value(v).expect("TOML maps to JSON")
}

fn is_fragment(p: &Path) -> bool {
    p.components().any(|c| c.as_os_str().to_string_lossy().starts_with('_'))
}

#[test]
fn every_catalogue_file_validates_against_the_schema() {
    let scenario = jsonschema::validator_for(&schema::scenario_schema()).expect("the schema compiles");
    let fragment = jsonschema::validator_for(&schema::fragment_schema()).expect("the fragment schema compiles");
    let live = jsonschema::validator_for(&schema::live_schema()).expect("the live schema compiles");
    let mut files = Vec::new();
    toml_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios"), &mut files);
    assert!(files.len() >= 20, "{}", files.len());
    for f in files {
        let v = as_json(&f);
        let validator = if agentdrill::live::scenario::is_live_file(&f) {
            &live
        } else if is_fragment(&f) {
            &fragment
        } else {
            &scenario
        };
        let errors: Vec<String> =
            validator.iter_errors(&v).map(|e| format!("{} at {}", e, e.instance_path())).collect();
        assert!(errors.is_empty(), "{}: {errors:#?}", f.display());
    }
}

#[test]
fn the_schema_refuses_what_the_loader_refuses() {
    let validator = jsonschema::validator_for(&schema::scenario_schema()).expect("the schema compiles");
    for (what, text) in [
        (
            "unknown phase",
            "tier = \"batch\"\nhorizon = \"1h\"\n[[faults]]\nkind = \"worker_kill\"\nat = { job = 1, step = 2, phase = \"mid_call\" }\n",
        ),
        ("unknown field", "tier = \"batch\"\nhorizon = \"1h\"\nbogus = 1\n"),
        ("bad duration", "tier = \"batch\"\nhorizon = \"soon\"\n"),
        ("bad tier", "tier = { name = \"x\", rto = 5 }\nhorizon = \"1h\"\n"),
        ("missing horizon", "tier = \"batch\"\n"),
        ("unknown fault kind", "tier = \"batch\"\nhorizon = \"1h\"\n[[faults]]\nkind = \"meteor\"\nat = \"1m\"\n"),
    ] {
        let v: toml::Value = toml::from_str(text).expect("valid TOML");
        let v = serde_json::to_value(v).expect("JSON");
        assert!(!validator.is_valid(&v), "{what}: the schema accepted it");
    }
}

/// Durations the loader takes, the schema takes too (and the reverse for
/// the shapes it refuses).
#[test]
fn the_schema_takes_the_durations_the_loader_takes() {
    let validator = jsonschema::validator_for(&schema::scenario_schema()).expect("the schema compiles");
    for (d, loads) in
        [("90s", true), ("3.5s", true), ("1h 30m", true), ("1.5h 30m", true), ("1.s", false), (".5s", false)]
    {
        assert_eq!(agentdrill::drill::scenario::parse_duration(d).is_ok(), loads, "{d}: the loader");
        let text = format!("tier = \"batch\"\nhorizon = \"{d}\"\n");
        let v = serde_json::to_value(toml::from_str::<toml::Value>(&text).expect("valid TOML")).expect("JSON");
        assert_eq!(validator.is_valid(&v), loads, "{d}: the schema");
    }
}

#[test]
fn durations_and_when_are_documented() {
    let s = schema::scenario_schema();
    let defs = &s["$defs"];
    assert_eq!(defs["Duration"]["type"], "string");
    assert!(defs["Duration"]["pattern"].is_string());
    let when = &defs["When"]["oneOf"];
    assert_eq!(when.as_array().map(Vec::len), Some(2), "{when}");
    assert!(s["properties"]["include"].is_object());
}
