//! Game days: a programme of drills by cadence (`gameday.toml`), run as a
//! set, and the blind exercise, where one drill is drawn with a seed the
//! responders do not see and their acknowledgement, diagnosis, stakeholder
//! update and recovery are timed against the P1 playbook's targets.
//!
//! A programme follows the testing schedules of the seeds: monthly
//! rollback drills, quarterly failover drills, an annual full DR
//! simulation, a snapshot restore checked for parity, and the primary
//! provider killed with the router's failover confirmed within 30 s
//! (`rto_within_s`, a target the programme adds to the tier's).
//!
//! ```toml
//! name = "payments agent"
//! [[drill]]
//! scenario = "../scenarios/deploy/bad-prompt-deploy.toml"  # relative to this file
//! cadence = "monthly"            # monthly | quarterly | annual
//! owner = "platform on-call"
//! tier = "internal-ops"          # the tier the owner claims; must be the scenario's
//! confirms = "rollback in under 5 minutes"
//! rto_within_s = 30              # optional: a tighter RTO the programme confirms
//! ```
//!
//! The wall clock is the caller's: every function here takes the time.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::drill::loader;
use crate::report::Entry;

/// At most this many drills in a programme.
pub const MAX_DRILLS: usize = 256;

/// Acknowledge a P1 alert within this (seed 002's playbook).
pub const ACK_TARGET_S: f64 = 120.0;

/// Send stakeholders a status update within this (seed 002's playbook).
pub const UPDATE_TARGET_S: f64 = 900.0;

/// The blind exercise's state file, in the reports folder.
pub const BLIND_FILE: &str = "blind.json";

/// How often a drill is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Cadence {
    /// Every month (rollback drills, restore rehearsals).
    Monthly,
    /// Every quarter (failover drills).
    Quarterly,
    /// Every year (the full DR simulation).
    Annual,
}

impl Cadence {
    /// The word.
    pub fn name(self) -> &'static str {
        match self {
            Cadence::Monthly => "monthly",
            Cadence::Quarterly => "quarterly",
            Cadence::Annual => "annual",
        }
    }
}

/// A programme error, placed in its file.
#[derive(Debug, thiserror::Error)]
pub enum ProgrammeError {
    /// The file was refused before parsing, with the scenario files' guards
    /// (not a regular file, over 1 MiB, not UTF-8) or could not be read.
    #[error("{0}")]
    Read(crate::drill::scenario::ScenarioError),
    /// A value is wrong, at a line and column.
    #[error("{path}:{line}:{col}: {field}: {message}")]
    At {
        /// File.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        col: usize,
        /// The field (`drill[2].tier`).
        field: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProgramme {
    name: String,
    #[serde(default)]
    drill: Vec<RawDrill>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDrill {
    scenario: Spanned<String>,
    cadence: Cadence,
    owner: Spanned<String>,
    tier: Spanned<String>,
    #[serde(default)]
    confirms: String,
    rto_within_s: Option<Spanned<f64>>,
}

/// One drill of a programme.
#[derive(Clone, Debug)]
pub struct ProgrammeDrill {
    /// The scenario file (relative paths resolved against the programme).
    pub scenario: PathBuf,
    /// How often it runs.
    pub cadence: Cadence,
    /// Who owns it.
    pub owner: String,
    /// The tier its owner claims (checked against the scenario's).
    pub tier: String,
    /// What it confirms, in words.
    pub confirms: String,
    /// A tighter RTO the programme confirms, seconds.
    pub rto_within_s: Option<f64>,
    /// The scenario, loaded and validated.
    pub loaded: loader::Loaded,
}

/// A programme.
#[derive(Clone, Debug)]
pub struct Programme {
    /// Its name.
    pub name: String,
    /// The file it came from.
    pub file: PathBuf,
    /// The drills in file order.
    pub drills: Vec<ProgrammeDrill>,
}

impl Programme {
    /// The drills of one cadence (every drill with None).
    pub fn select(&self, cadence: Option<Cadence>) -> Vec<&ProgrammeDrill> {
        self.drills.iter().filter(|d| cadence.is_none_or(|c| d.cadence == c)).collect()
    }

    /// The drill a scenario name belongs to.
    pub fn drill_named(&self, scenario: &str) -> Option<&ProgrammeDrill> {
        self.drills.iter().find(|d| d.loaded.scenario.name == scenario)
    }
}

/// Reads and validates a programme: every error is listed, each with its
/// file, line, column, field and fix. The scenarios it names are loaded
/// too, and their errors listed.
pub fn load(path: &Path) -> Result<Programme, Vec<ProgrammeError>> {
    let text = loader::read_scenario_text(path).map_err(|e| vec![ProgrammeError::Read(e)])?;
    let at = |offset: usize, field: String, message: String| {
        let (line, col) = loader::line_col(&text, offset);
        ProgrammeError::At { path: path.to_owned(), line, col, field, message }
    };
    let raw: RawProgramme = toml::from_str(&text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        vec![at(
            offset,
            "programme".into(),
            format!("{} (see the example in examples/gameday.toml)", e.message().trim()),
        )]
    })?;
    let mut errors = Vec::new();
    if raw.drill.is_empty() {
        errors.push(at(0, "drill".into(), "no drills: add at least one [[drill]] table".into()));
    }
    if raw.drill.len() > MAX_DRILLS {
        errors.push(at(
            0,
            "drill".into(),
            format!("{} drills, over the limit of {MAX_DRILLS}: split the programme", raw.drill.len()),
        ));
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let mut drills = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, d) in raw.drill.into_iter().enumerate() {
        let field = |f: &str| format!("drill[{i}].{f}");
        if d.owner.get_ref().trim().is_empty() {
            errors.push(at(
                d.owner.span().start,
                field("owner"),
                "empty: name the person or team who runs this drill".into(),
            ));
        }
        if let Some(r) = &d.rto_within_s
            && !(r.get_ref().is_finite() && *r.get_ref() > 0.0)
        {
            errors.push(at(r.span().start, field("rto_within_s"), "must be a positive number of seconds".into()));
        }
        let file = base.join(d.scenario.get_ref());
        let loaded = match loader::load(&file) {
            Ok(l) => l,
            Err(e) => {
                let causes: Vec<String> = e.all().iter().map(ToString::to_string).collect();
                errors.push(at(
                    d.scenario.span().start,
                    field("scenario"),
                    format!(
                        "{} cannot be used (paths are relative to the programme file): {}",
                        file.display(),
                        causes.join("; ")
                    ),
                ));
                continue;
            }
        };
        let claimed = d.tier.get_ref().as_str();
        let actual = loaded.scenario.tier.name().to_owned();
        if claimed != actual {
            errors.push(at(
                d.tier.span().start,
                field("tier"),
                format!("claims \"{claimed}\" but {} is a \"{actual}\" drill: write tier = \"{actual}\", or point at a drill of that tier", file.display()),
            ));
        }
        if !seen.insert(loaded.scenario.name.clone()) {
            errors.push(at(
                d.scenario.span().start,
                field("scenario"),
                format!("{} is already in the programme: list each drill once", file.display()),
            ));
        }
        drills.push(ProgrammeDrill {
            scenario: file,
            cadence: d.cadence,
            owner: d.owner.into_inner(),
            tier: actual,
            confirms: d.confirms,
            rto_within_s: d.rto_within_s.map(Spanned::into_inner),
            loaded,
        });
    }
    if errors.is_empty() { Ok(Programme { name: raw.name, file: path.to_owned(), drills }) } else { Err(errors) }
}

/// Runs one drill of a programme within the default budget
/// ([`crate::drill::Budget`]) and applies the programme's own target.
pub fn run_drill(pd: &ProgrammeDrill, seed: Option<u64>) -> Result<Entry, crate::drill::OverBudget> {
    let sc = &pd.loaded.scenario;
    let mut result = crate::drill::try_run(sc, seed.unwrap_or(sc.seed), &crate::drill::Budget::default())?;
    if let Some(limit) = pd.rto_within_s {
        let missed = match result.rto_s {
            Some(r) if r < limit => None,
            Some(r) => Some(format!("programme target: RTO {r:.1} s ≥ {limit:.0} s ({})", pd.confirms)),
            None => Some(format!("programme target: not recovered, RTO must be under {limit:.0} s ({})", pd.confirms)),
        };
        if let Some(m) = missed {
            result.violations.push(m);
            result.met_targets = false;
            result.verdict = if sc.expect == crate::drill::scenario::Expect::Fail { "pass" } else { "fail" };
        }
    }
    Ok(Entry { result, file: Some(pd.scenario.clone()), hash: Some(pd.loaded.hash.clone()), wall: None })
}

/// What a responder typed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponderAction {
    /// `gameday ack`: the alert is acknowledged.
    Ack,
    /// `gameday note TEXT`: a finding (the first one is the diagnosis).
    Note,
    /// `gameday note --update TEXT`: a status update to stakeholders.
    Update,
    /// `gameday resolved`: service is back.
    Resolved,
}

/// One line of the responders' timeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResponderEvent {
    /// When, Unix milliseconds.
    pub at_unix_ms: u64,
    /// What.
    pub action: ResponderAction,
    /// The note's text.
    pub text: String,
}

/// A blind exercise in progress (the state file).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlindState {
    /// The programme file.
    pub programme: PathBuf,
    /// The drill drawn (index into the programme's drills).
    pub drill: usize,
    /// The hidden seed.
    pub seed: u64,
    /// When the fault was injected, Unix milliseconds.
    pub started_unix_ms: u64,
    /// The responders' timeline.
    pub events: Vec<ResponderEvent>,
}

/// At most this many responder events are kept.
pub const MAX_EVENTS: usize = 1_000;

impl BlindState {
    /// Draws a drill of `candidates` (indices into the programme) and a
    /// seed from `entropy`.
    pub fn draw(programme: &Path, candidates: &[usize], entropy: u64, now_unix_ms: u64) -> BlindState {
        assert!(!candidates.is_empty(), "a blind exercise needs a drill to draw");
        // SplitMix64 steps: the drill and the seed are independent draws.
        let mix = |mut z: u64| {
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let a = mix(entropy.wrapping_add(0x9e37_79b9_7f4a_7c15));
        let b = mix(a.wrapping_add(0x9e37_79b9_7f4a_7c15));
        BlindState {
            programme: programme.to_owned(),
            drill: candidates[(a % candidates.len() as u64) as usize],
            seed: b,
            started_unix_ms: now_unix_ms,
            events: Vec::new(),
        }
    }

    /// Records what a responder typed. Refused after `resolved`, or past
    /// [`MAX_EVENTS`].
    pub fn record(&mut self, action: ResponderAction, text: &str, now_unix_ms: u64) -> Result<(), String> {
        if self.events.iter().any(|e| e.action == ResponderAction::Resolved) {
            return Err("the exercise is already resolved".into());
        }
        if self.events.len() >= MAX_EVENTS {
            return Err(format!("over {MAX_EVENTS} responder events: resolve the exercise"));
        }
        self.events.push(ResponderEvent {
            at_unix_ms: now_unix_ms.max(self.started_unix_ms),
            action,
            text: text.to_owned(),
        });
        Ok(())
    }

    /// The responders' times against the playbook's targets.
    pub fn outcome(&self) -> BlindOutcome {
        let since = |e: &ResponderEvent| (e.at_unix_ms - self.started_unix_ms) as f64 / 1_000.0;
        let first = |pred: &dyn Fn(ResponderAction) -> bool| self.events.iter().find(|e| pred(e.action)).map(since);
        BlindOutcome {
            ack_s: first(&|a| a == ResponderAction::Ack),
            diagnose_s: first(&|a| matches!(a, ResponderAction::Note | ResponderAction::Update)),
            update_s: first(&|a| a == ResponderAction::Update),
            recover_s: first(&|a| a == ResponderAction::Resolved),
            timeline: self.events.iter().map(|e| (since(e), e.action, e.text.clone())).collect(),
            drill: String::new(),
            faults: Vec::new(),
        }
    }
}

/// What the responders did, for the report.
#[derive(Clone, Debug, PartialEq)]
pub struct BlindOutcome {
    /// Seconds to acknowledge.
    pub ack_s: Option<f64>,
    /// Seconds to the first finding.
    pub diagnose_s: Option<f64>,
    /// Seconds to the first stakeholder update.
    pub update_s: Option<f64>,
    /// Seconds to `resolved`.
    pub recover_s: Option<f64>,
    /// Everything they typed: (seconds since the injection, what, text).
    pub timeline: Vec<(f64, ResponderAction, String)>,
    /// The drill that was drawn (revealed in the report).
    pub drill: String,
    /// Its faults in words (revealed in the report).
    pub faults: Vec<String>,
}

/// The alert responders see: what monitoring shows, never the fault.
pub fn alert(e: &Entry) -> String {
    let counts = crate::report::event_counts(&e.result);
    let shown = [
        ("failover_detected", "health checks failed"),
        ("breaker_opened", "a provider's circuit breaker opened"),
        ("lease_expired", "task leases expired"),
        ("corruption_detected", "the vector store's integrity check failed"),
        ("rollback_started", "post-deploy health checks failed"),
        ("schema_violation", "tool responses failed validation"),
        ("redelivered", "the queue redelivered tasks"),
        ("task_failed", "tasks failed"),
        ("sync_degraded", "the synchronous replica went silent"),
    ];
    let symptoms: Vec<String> = shown
        .iter()
        .filter_map(|(k, words)| counts.get(*k).filter(|n| **n > 0).map(|n| format!("{words} (×{n})")))
        .collect();
    if symptoms.is_empty() {
        "P1 alert on the drill stack: error rates rose; no automated safeguard fired.".into()
    } else {
        format!("P1 alert on the drill stack: {}.", symptoms.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_cover_every_candidate_and_hide_the_seed() {
        let mut seen = BTreeSet::new();
        for e in 0..64 {
            let s = BlindState::draw(Path::new("p.toml"), &[1, 3, 4], e, 0);
            assert!([1, 3, 4].contains(&s.drill));
            seen.insert(s.drill);
            assert_ne!(s.seed, e, "the seed is not the entropy itself");
        }
        assert_eq!(seen.len(), 3);
    }

    #[test]
    fn outcome_times_each_playbook_step() {
        let mut s = BlindState::draw(Path::new("p.toml"), &[0], 7, 1_000);
        s.record(ResponderAction::Ack, "", 61_000).unwrap();
        s.record(ResponderAction::Note, "provider down", 181_000).unwrap();
        s.record(ResponderAction::Update, "failing over", 601_000).unwrap();
        s.record(ResponderAction::Resolved, "", 901_000).unwrap();
        assert!(s.record(ResponderAction::Ack, "", 902_000).is_err());
        let o = s.outcome();
        assert_eq!(
            (o.ack_s, o.diagnose_s, o.update_s, o.recover_s),
            (Some(60.0), Some(180.0), Some(600.0), Some(900.0))
        );
        assert_eq!(o.timeline.len(), 4);
    }
}
