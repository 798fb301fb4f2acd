//! Recovery tiers (DOMAIN.md, from seed 003) and their targets.

use serde::{Deserialize, Serialize};

use crate::ids::US_PER_S;

/// A named tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
