//! Recovery tiers (DOMAIN.md, from seed 003) and their targets, and the
//! custom tiers a team defines (its own RTO, RPO and invariants).

use serde::{Deserialize, Serialize};

use crate::components::ids::US_PER_S;
use crate::drill::scenario::Dur;

/// A named tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Tier {
    /// RTO < 2 min, RPO < 30 s (active-active).
    CustomerFacing,
    /// RTO < 15 min, RPO < 5 min (warm standby + 5-minute snapshots).
    InternalOps,
    /// RTO < 1 h, RPO < 1 h (cold standby + hourly snapshots).
    Batch,
    /// RTO < 24 h, RPO < 24 h (daily snapshots).
    Sandbox,
}

impl Tier {
    /// Every tier, strictest first.
    pub const ALL: [Tier; 4] = [Tier::CustomerFacing, Tier::InternalOps, Tier::Batch, Tier::Sandbox];

    /// RTO target in seconds (the measured value must be below it).
    pub fn rto_s(self) -> f64 {
        match self {
            Tier::CustomerFacing => 120.0,
            Tier::InternalOps => 900.0,
            Tier::Batch => 3_600.0,
            Tier::Sandbox => 86_400.0,
        }
    }

    /// RPO target in seconds.
    pub fn rpo_s(self) -> f64 {
        match self {
            Tier::CustomerFacing => 30.0,
            Tier::InternalOps => 300.0,
            Tier::Batch => 3_600.0,
            Tier::Sandbox => 86_400.0,
        }
    }

    /// RTO target in microseconds.
    pub fn rto_us(self) -> u64 {
        self.rto_s() as u64 * US_PER_S
    }

    /// Name as written in scenario files.
    pub fn name(self) -> &'static str {
        match self {
            Tier::CustomerFacing => "customer-facing",
            Tier::InternalOps => "internal-ops",
            Tier::Batch => "batch",
            Tier::Sandbox => "sandbox",
        }
    }
}

/// A zero-tolerance count a tier requires (DOMAIN.md: every named tier
/// requires all of them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Invariant {
    /// No ledger entry beyond one per (task, step).
    NoDuplicates,
    /// No step recorded as done without its side effect in a ledger.
    NoLostEffects,
    /// Every task finished by the horizon.
    NoStuckTasks,
    /// No step decided differently after a resume.
    NoReplannedSteps,
    /// No write accepted from a worker whose lease moved on.
    NoStaleWrites,
    /// No side effect sent by a worker whose lease moved on (two workers
    /// never run the same step).
    NoStaleActions,
    /// No step result persisted from a tool response that failed the schema.
    NoCorruptedWrites,
    /// No step worked by two workers at once.
    NoConcurrentRuns,
}

impl Invariant {
    /// Every invariant, in report order.
    pub const ALL: [Invariant; 8] = [
        Invariant::NoDuplicates,
        Invariant::NoLostEffects,
        Invariant::NoStuckTasks,
        Invariant::NoReplannedSteps,
        Invariant::NoStaleWrites,
        Invariant::NoStaleActions,
        Invariant::NoCorruptedWrites,
        Invariant::NoConcurrentRuns,
    ];

    /// Name as written in scenario files.
    pub fn name(self) -> &'static str {
        match self {
            Invariant::NoDuplicates => "no_duplicates",
            Invariant::NoLostEffects => "no_lost_effects",
            Invariant::NoStuckTasks => "no_stuck_tasks",
            Invariant::NoReplannedSteps => "no_replanned_steps",
            Invariant::NoStaleWrites => "no_stale_writes",
            Invariant::NoStaleActions => "no_stale_actions",
            Invariant::NoCorruptedWrites => "no_corrupted_writes",
            Invariant::NoConcurrentRuns => "no_concurrent_runs",
        }
    }

    /// What it counts, in words (for violations).
    pub fn counts(self) -> &'static str {
        match self {
            Invariant::NoDuplicates => "duplicate side effects",
            Invariant::NoLostEffects => "lost side effects",
            Invariant::NoStuckTasks => "stuck tasks",
            Invariant::NoReplannedSteps => "replanned steps",
            Invariant::NoStaleWrites => "stale writes (fencing)",
            Invariant::NoStaleActions => "stale actions (two workers ran a step)",
            Invariant::NoCorruptedWrites => "corrupted writes (unvalidated tool responses)",
            Invariant::NoConcurrentRuns => "concurrent runs (two workers on one step at once)",
        }
    }
}

/// A tier a team defines for itself:
/// `tier = { name = "payments", rto = "5m", rpo = "1m", invariants = ["no_duplicates"] }`.
/// With the name of a named tier, the targets left out come from it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomTier {
    /// Name, shown in reports.
    pub name: String,
    /// RTO target: the measured RTO must be below it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rto: Option<Dur>,
    /// RPO target: the measured RPO must be below it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo: Option<Dur>,
    /// The zero-tolerance counts checked (all of them when left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invariants: Option<Vec<Invariant>>,
}

/// The tier a scenario claims: a named tier (`tier = "internal-ops"`) or a
/// custom one (`tier = { name = "payments", rto = "5m", rpo = "1m" }`).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum TierSpec {
    /// One of the four tiers of DOMAIN.md.
    Named(Tier),
    /// A team's own.
    Custom(CustomTier),
}

impl From<Tier> for TierSpec {
    fn from(t: Tier) -> Self {
        TierSpec::Named(t)
    }
}

/// What a tier requires, resolved.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Targets {
    /// RTO target, seconds (the measured value must be below it).
    pub rto_s: f64,
    /// RPO target, seconds.
    pub rpo_s: f64,
    /// The zero-tolerance counts checked.
    pub invariants: Vec<Invariant>,
}

impl TierSpec {
    /// Name, as shown in reports.
    pub fn name(&self) -> &str {
        match self {
            TierSpec::Named(t) => t.name(),
            TierSpec::Custom(c) => &c.name,
        }
    }

    /// The named tier this is, or builds on.
    pub fn base(&self) -> Option<Tier> {
        match self {
            TierSpec::Named(t) => Some(*t),
            TierSpec::Custom(c) => Tier::ALL.into_iter().find(|t| t.name() == c.name),
        }
    }

    /// The targets. A custom tier without a target and without a named base
    /// has none (validation refuses it before a drill runs): infinity.
    pub fn targets(&self) -> Targets {
        let base = self.base();
        let from_base = |f: fn(Tier) -> f64| base.map_or(f64::INFINITY, f);
        match self {
            TierSpec::Named(t) => Targets { rto_s: t.rto_s(), rpo_s: t.rpo_s(), invariants: Invariant::ALL.to_vec() },
            TierSpec::Custom(c) => Targets {
                rto_s: c.rto.map_or_else(|| from_base(Tier::rto_s), |d| d.ms() as f64 / 1_000.0),
                rpo_s: c.rpo.map_or_else(|| from_base(Tier::rpo_s), |d| d.ms() as f64 / 1_000.0),
                invariants: {
                    let mut v = c.invariants.clone().unwrap_or_else(|| Invariant::ALL.to_vec());
                    v.sort();
                    v.dedup();
                    v
                },
            },
        }
    }

    /// The cross-field rules of a tier: (field, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let TierSpec::Custom(c) = self else { return out };
        if c.name.trim().is_empty() {
            out.push(("tier.name".into(), "a custom tier needs a name, e.g. name = \"payments\"".into()));
        }
        if self.base().is_none() && (c.rto.is_none() || c.rpo.is_none()) {
            let missing: Vec<&str> =
                [("rto", c.rto.is_none()), ("rpo", c.rpo.is_none())].iter().filter(|m| m.1).map(|m| m.0).collect();
            out.push((
                "tier".into(),
                format!(
                    "custom tier {:?} has no {} target; add {} (or name a built-in tier: {})",
                    c.name,
                    missing.join(" or "),
                    missing.iter().map(|m| format!("{m} = \"5m\"")).collect::<Vec<_>>().join(", "),
                    Tier::ALL.map(Tier::name).join(", ")
                ),
            ));
        }
        for (what, d) in [("rto", c.rto), ("rpo", c.rpo)] {
            if d.is_some_and(|d| d.ms() == 0) {
                out.push((
                    format!("tier.{what}"),
                    "must be longer than 0 (the measured value must be below it)".into(),
                ));
            }
        }
        out
    }
}

impl<'de> Deserialize<'de> for TierSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = TierSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "a named tier (\"customer-facing\", \"internal-ops\", \"batch\", \"sandbox\") or a custom tier such as { name = \"payments\", rto = \"5m\", rpo = \"1m\" }",
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<TierSpec, E> {
                Tier::deserialize(serde::de::value::StrDeserializer::<E>::new(v)).map(TierSpec::Named)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<TierSpec, A::Error> {
                CustomTier::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(TierSpec::Custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl schemars::JsonSchema for TierSpec {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "TierSpec".into()
    }
    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "The recovery tier the stack claims: a named tier or a custom one.",
            "oneOf": [g.subschema_for::<Tier>(), g.subschema_for::<CustomTier>()]
        })
    }
}
