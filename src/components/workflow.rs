//! Workflow templates: the plans agents run.
//!
//! A plan is a fixed sequence of step kinds; what varies is the *decisions*
//! model steps take (which flight, how much to refund). A tool step's
//! arguments are a function of the decision of the model step that governs
//! it, so a resumer that re-derives a decision sends different arguments:
//! that is what "replanned" means, measured at the APIs.

use serde::Serialize;

/// What a step does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// A model call through the provider router; its output is a decision
    /// among `options`.
    Model {
        /// Alternatives the model chooses among.
        options: u32,
        /// Prompt tokens, prefix included.
        input_tokens: u32,
        /// Completion tokens.
        output_tokens: u32,
    },
    /// A read-only tool (web or flight search).
    Search,
    /// Charge a card at the payment API (side effect).
    Charge,
    /// Refund at the payment API (side effect).
    Refund,
    /// Send an email (side effect).
    Email,
    /// Upsert into vector memory.
    MemWrite,
    /// Query vector memory.
    MemRead,
}

impl StepKind {
    /// Whether the step has an external side effect that must happen exactly once.
    pub fn is_side_effect(self) -> bool {
        matches!(self, StepKind::Charge | StepKind::Refund | StepKind::Email)
    }

    /// Short name for logs and reports.
    pub fn name(self) -> &'static str {
        match self {
            StepKind::Model { .. } => "model",
            StepKind::Search => "search",
            StepKind::Charge => "charge",
            StepKind::Refund => "refund",
            StepKind::Email => "email",
            StepKind::MemWrite => "memory_write",
            StepKind::MemRead => "memory_read",
        }
    }
}

/// One step of a template.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct StepSpec {
    /// What it does.
    pub kind: StepKind,
    /// The model step whose decision this step's arguments depend on.
    pub governed_by: Option<u16>,
    /// The step's output is an artefact later steps need (kept on the
    /// scratchpad; the reference also persists it durably).
    pub artefact: bool,
    /// The step's name in its workflow, when it says more than its kind
    /// ("summarise" rather than "model").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<&'static str>,
}

impl StepSpec {
    /// The step's name for reports: its label, else its kind.
    pub fn name(&self) -> &'static str {
        self.label.unwrap_or(self.kind.name())
    }
}

/// A named plan.
#[derive(Clone, Debug, Serialize)]
pub struct Template {
    /// Name used in scenario files.
    pub name: &'static str,
    /// What the workflow does, for `list` and reports.
    pub purpose: &'static str,
    /// Hash of the system prompt and tool schemas: the provider's prompt-cache key.
    pub prefix_hash: u64,
    /// Steps in order; the ordinal is the index.
    pub steps: Vec<StepSpec>,
}

/// The most steps any template has (bounds per-task arrays).
pub const MAX_STEPS: usize = 16;

fn model(options: u32) -> StepSpec {
    StepSpec {
        kind: StepKind::Model { options, input_tokens: 1_800, output_tokens: 250 },
        governed_by: None,
        artefact: false,
        label: None,
    }
}

fn tool(kind: StepKind, governed_by: u16) -> StepSpec {
    StepSpec { kind, governed_by: Some(governed_by), artefact: false, label: None }
}

/// Every built-in template, built once per process: [`builtin`] for the
/// readers that need no copy of their own (a generated drill's set-up and
/// checks read them several times each).
pub fn builtin_shared() -> &'static [Template] {
    static BUILTIN: std::sync::LazyLock<Vec<Template>> = std::sync::LazyLock::new(builtin);
    &BUILTIN
}

/// Every built-in template, in a stable order.
pub fn builtin() -> Vec<Template> {
    vec![
        Template {
            name: "book_flight",
            purpose: "search flights, choose one, charge the card, remember it, email the itinerary",
            prefix_hash: 0xb00c_f11e,
            steps: vec![
                model(4),
                tool(StepKind::Search, 0),
                model(4),
                tool(StepKind::Charge, 2),
                tool(StepKind::MemWrite, 2),
                tool(StepKind::Email, 2),
            ],
        },
        Template {
            name: "research_report",
            purpose: "plan, search twice, summarise (an artefact), remember, email the report",
            prefix_hash: 0x7e5e_a7c4,
            steps: vec![
                model(3),
                tool(StepKind::Search, 0),
                tool(StepKind::Search, 0),
                StepSpec { artefact: true, ..model(5) },
                tool(StepKind::MemWrite, 3),
                tool(StepKind::Email, 3),
            ],
        },
        Template {
            name: "approve_refund",
            purpose: "read the customer's history, decide, refund, email the confirmation",
            prefix_hash: 0xaf_f00d,
            steps: vec![
                StepSpec { kind: StepKind::MemRead, governed_by: None, artefact: false, label: None },
                model(3),
                tool(StepKind::Refund, 1),
                tool(StepKind::Email, 1),
            ],
        },
        Template {
            name: "probe",
            purpose: "synthetic health probe: one model call (harness traffic, not counted as work)",
            prefix_hash: 0x9_0be,
            steps: vec![StepSpec {
                kind: StepKind::Model { options: 1, input_tokens: 200, output_tokens: 10 },
                governed_by: None,
                artefact: false,
                label: None,
            }],
        },
        Template {
            name: "summarise_report",
            purpose: "the checkpointing walkthrough's three steps: load the data (an artefact), summarise it (an artefact), write the report to memory",
            prefix_hash: 0x5a3e_c4e9,
            steps: vec![
                StepSpec { kind: StepKind::Search, governed_by: None, artefact: true, label: Some("load_data") },
                StepSpec { artefact: true, label: Some("summarise"), ..model(3) },
                StepSpec { label: Some("write_report"), ..tool(StepKind::MemWrite, 1) },
            ],
        },
    ]
}

/// The arguments a step sends, from the job, the step and the decision that
/// governs it. Deterministic; a different decision gives different arguments.
#[inline]
pub fn args_for(job: u32, ordinal: u16, decision: u32) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325_u64;
    for w in [u64::from(job), u64::from(ordinal), u64::from(decision)] {
        h ^= w;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_well_formed() {
        for t in builtin() {
            assert!(t.steps.len() <= MAX_STEPS, "{}", t.name);
            for (i, s) in t.steps.iter().enumerate() {
                if let Some(g) = s.governed_by {
                    assert!((g as usize) < i, "{} step {i} governed by a later step", t.name);
                    assert!(matches!(t.steps[g as usize].kind, StepKind::Model { .. }));
                }
            }
        }
    }
}
