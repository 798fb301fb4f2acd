//! The live reference stack: the simulator's own sans-IO [`Orchestrator`]
//! and [`Worker`] run as real processes (`agentdrill stack orchestrator`,
//! `agentdrill stack worker`) behind a live [`Env`](crate::components::env::Env).
//! There is no second copy of their logic: only the transport differs.
//!
//! - [`env`](mod@env): the live `Env` (boot clock, tokio timers, seeded rng, an outbox
//!   the process loop delivers) and the envelope of messages between processes;
//! - [`fakes`]: the worker's requests to the fakes in their wire shapes, and
//!   the answers back into `Msg`s;
//! - [`pg`]: the orchestrator's durable store in PostgreSQL (event log,
//!   tasks, steps, leases with fencing tokens enforced in SQL);
//! - [`orchestrator`], [`worker`]: the two process loops and their HTTP
//!   endpoints (`POST /msg`, `POST /jobs`, `GET /jobs/{job}`, `GET /health`).
//!
//! **The process contract** (shared with the live harness): each process
//! reads `AGENTDRILL_PROCESS`, `AGENTDRILL_REPLICA`, `AGENTDRILL_REGION`,
//! `AGENTDRILL_LISTEN_ADDR` (its own `127.0.0.1:PORT`),
//! `AGENTDRILL_PEER_ORCHESTRATOR_URL` (workers), `DATABASE_URL`
//! (orchestrator), the fakes' `ANTHROPIC_BASE_URL`, `OPENAI_BASE_URL`,
//! `STRIPE_API_BASE`, `EMAIL_API_URL`, `QDRANT_URL`, and the policy switches
//! in `AGENTDRILL_POLICY` (anti-pattern names, comma-separated).
//!
//! [`Orchestrator`]: crate::components::orchestrator::Orchestrator
//! [`Worker`]: crate::components::worker::Worker

pub mod env;
pub mod fakes;
pub mod orchestrator;
pub mod pg;
pub mod worker;

use crate::components::policy::{AntiPattern, Policy};

/// Errors in a process's configuration (its environment and flags).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required variable is not set.
    #[error(
        "environment variable {name} is not set: {what} (the live harness sets it; by hand: export {name}={example})"
    )]
    Missing {
        /// Variable.
        name: &'static str,
        /// What it is.
        what: &'static str,
        /// An example value.
        example: &'static str,
    },
    /// A variable or flag has a value that does not parse.
    #[error("{name}={value:?} is not valid: {why}")]
    Invalid {
        /// Variable or flag.
        name: String,
        /// Its value.
        value: String,
        /// What is expected.
        why: String,
    },
}

/// A required environment variable.
pub fn required(name: &'static str, what: &'static str, example: &'static str) -> Result<String, ConfigError> {
    std::env::var(name).ok().filter(|v| !v.is_empty()).ok_or(ConfigError::Missing { name, what, example })
}

/// An optional environment variable parsed as `T`.
pub fn optional<T: std::str::FromStr>(name: &str) -> Result<Option<T>, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v.parse().map(Some).map_err(|e: T::Err| ConfigError::Invalid {
            name: name.to_owned(),
            value: v,
            why: e.to_string(),
        }),
        _ => Ok(None),
    }
}

/// The policy: the reference, with each named anti-pattern applied in
/// order. Names are the catalogue's (`key_from_model_output`,
/// `checkpoint_after_step`, `no_fencing`, `resume_without_reconcile`, …),
/// comma-separated, from `AGENTDRILL_POLICY` and then `flags`.
pub fn policy(env_value: Option<&str>, flags: &[String]) -> Result<Policy, ConfigError> {
    let mut p = Policy::default();
    let names = env_value.into_iter().flat_map(|v| v.split(',')).chain(flags.iter().map(String::as_str));
    for name in names.map(str::trim).filter(|n| !n.is_empty()) {
        let ap: AntiPattern =
            serde_json::from_value(serde_json::Value::String(name.to_owned())).map_err(|_| ConfigError::Invalid {
                name: "AGENTDRILL_POLICY".into(),
                value: name.to_owned(),
                why: format!("not an anti-pattern; the names are: {}", anti_pattern_names().join(", ")),
            })?;
        ap.apply(&mut p);
    }
    Ok(p)
}

/// Every anti-pattern name `AGENTDRILL_POLICY` accepts.
pub fn anti_pattern_names() -> Vec<String> {
    use AntiPattern::*;
    [
        KeyFromModelOutput,
        KeyFromPromptHash,
        KeyFromWallClock,
        CheckpointAtSessionEnd,
        CheckpointAfterStep,
        ResumeWithoutReconcile,
        ShortLease,
        NoFencing,
        WorkerMintedTaskId,
        SingleProvider,
        NoCircuitBreaker,
        QueueDedupeWindowTooShort,
        ArtefactsOnLocalDisk,
        WallClockLeases,
        NoResponseValidation,
        NoAutoRollback,
    ]
    .iter()
    .map(|a| serde_json::to_value(a).expect("serialises").as_str().expect("a name").to_owned())
    .collect()
}

/// The address to listen on, from `AGENTDRILL_LISTEN_ADDR` (loopback only).
pub fn listen_addr() -> Result<std::net::SocketAddr, ConfigError> {
    let v = required("AGENTDRILL_LISTEN_ADDR", "the address this process listens on", "127.0.0.1:8601")?;
    let addr: std::net::SocketAddr = v.parse().map_err(|e: std::net::AddrParseError| ConfigError::Invalid {
        name: "AGENTDRILL_LISTEN_ADDR".into(),
        value: v.clone(),
        why: e.to_string(),
    })?;
    if !addr.ip().is_loopback() {
        return Err(ConfigError::Invalid {
            name: "AGENTDRILL_LISTEN_ADDR".into(),
            value: v,
            why: "the stack listens on loopback only (127.0.0.1:PORT)".into(),
        });
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::components::policy::KeySource;

    #[test]
    fn anti_patterns_by_name_turn_their_switches() {
        let p = policy(Some("key_from_model_output, no_fencing"), &["resume_without_reconcile".into()]).unwrap();
        assert_eq!(p.key_source, KeySource::ModelOutput);
        assert!(!p.fencing && !p.reconcile);
        assert_eq!(policy(None, &[]).unwrap(), Policy::default());
        let e = policy(Some("no_such_thing"), &[]).unwrap_err().to_string();
        assert!(e.contains("checkpoint_after_step"), "{e}");
    }
}
