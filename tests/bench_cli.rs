//! `agentdrill bench`: the command runs and prints every figure the issue
//! names. No timing is asserted here: speed is checked by the benchmark
//! itself (BENCHMARKS.md), not by `cargo test`.

use std::process::Command;

#[test]
fn bench_quick_json_names_every_figure() {
    let out = Command::new(env!("CARGO_BIN_EXE_agentdrill"))
        .args(["bench", "--quick", "--format", "json"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the binary runs");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    let figures = v["figures"].as_array().expect("a list of figures");
    let names: Vec<&str> = figures.iter().filter_map(|f| f["name"].as_str()).collect();
    for name in [
        "tool_calls_per_s",
        "acceleration_24h",
        "acceleration_warm_standby_2h",
        "catalogue_wall_s",
        "fuzz_cases_per_s",
        "fuzz_parallel_speedup",
        "scaling_1k_wall_s",
        "scaling_10k_wall_s",
        "scaling_100k_wall_s",
        "scaling_1m_wall_s",
        "scaling_1m_peak_bytes",
        "scaling_1k_cost_per_task_us",
        "scaling_10k_cost_per_task_us",
        "scaling_100k_cost_per_task_us",
        "scaling_1m_cost_per_task_us",
        "scaling_cost_ratio_largest_over_10k",
        "scaling_cost_ratio_1m_over_10k",
        "stack_over_floor",
        "speedup_vs_turmoil",
        "fake_payment_rps",
        "fake_payment_p99_ms",
        "fake_anthropic_stream_rps",
        "fake_anthropic_stream_p99_ms",
        "fake_payment_server_cpu_us",
        "fake_payment_client_cpu_us",
        "fake_loadgen_ceiling_rps",
        "live_kill_drill_wall_s",
    ] {
        assert!(names.contains(&name), "missing {name} in {names:?}");
    }
    for f in figures {
        for key in ["name", "value", "unit", "target"] {
            assert!(f.get(key).is_some(), "figure without {key}: {f}");
        }
    }
    let value = |name: &str| figures.iter().find(|f| f["name"] == name).expect("present")["value"].clone();
    // Measured even in quick mode (a number, whatever it is).
    for name in [
        "tool_calls_per_s",
        "acceleration_24h",
        "catalogue_wall_s",
        "fuzz_cases_per_s",
        "fuzz_parallel_speedup",
        "scaling_10k_cost_per_task_us",
        "stack_over_floor",
        "fake_payment_rps",
        "fake_payment_p99_ms",
        "fake_anthropic_stream_rps",
        "fake_payment_server_cpu_us",
        "fake_payment_client_cpu_us",
        "fake_loadgen_ceiling_rps",
    ] {
        assert!(value(name).is_number(), "{name} was not measured: {}", value(name));
    }
    // Skipped in quick mode.
    assert!(value("scaling_1m_wall_s").is_null());
    // The binary counts allocations, so peaks are reported.
    assert!(value("scaling_1k_peak_bytes").as_f64().is_some_and(|b| b > 0.0));
    assert_eq!(v["machine"]["counting_allocator"], true);
}

#[test]
fn bench_table_is_the_default() {
    let out = Command::new(env!("CARGO_BIN_EXE_agentdrill"))
        .args(["bench", "--quick"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the binary runs");
    assert_eq!(out.status.code(), Some(0));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("tool_calls_per_s") && s.contains("speedup_vs_turmoil"), "{s}");
}
