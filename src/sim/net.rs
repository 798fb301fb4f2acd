//! The simulated network: latency, jitter and loss per link class, and
//! partitions between hosts or regions, one-way or both ways, for a period.

use rand::{Rng, RngExt};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::components::ids::{HostId, Micros, RegionId};
use crate::drill::scenario::NetworkSpec;

/// Which kind of link a message crosses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkClass {
    /// Sender and receiver are the same host.
    Local,
    /// Same region.
    IntraRegion,
    /// Different regions.
    CrossRegion,
}

/// Latency and loss of one link class.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinkConfig {
    /// Fixed one-way latency.
    pub latency_us: Micros,
    /// Uniform extra latency in `[0, jitter_us]`.
    pub jitter_us: Micros,
    /// Probability that a message is dropped.
    pub loss: f64,
}

/// Link parameters for the whole network.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetConfig {
    /// Within a region (default 0.5 ms ± 0.2 ms).
    pub intra_region: LinkConfig,
    /// Between regions (default 35 ms ± 5 ms one way).
    pub cross_region: LinkConfig,
}

impl Default for NetConfig {
    /// The scenario's default network ([`NetworkSpec::default`]).
    fn default() -> Self {
        NetConfig::from(&NetworkSpec::default())
    }
}

impl From<&NetworkSpec> for NetConfig {
    /// The scenario's `[stack.network]`: lossless links (loss comes from
    /// faults).
    fn from(n: &NetworkSpec) -> Self {
        NetConfig {
            intra_region: LinkConfig {
                latency_us: n.intra_region_latency_us,
                jitter_us: n.intra_region_jitter_us,
                loss: 0.0,
            },
            cross_region: LinkConfig {
                latency_us: n.cross_region_latency_us,
                jitter_us: n.cross_region_jitter_us,
                loss: 0.0,
            },
        }
    }
}

/// One side of a partition or degraded link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Endpoint {
    /// A single host.
    Host(HostId),
    /// Every host of a region.
    Region(RegionId),
}

impl Endpoint {
    /// Whether host `h`, in region `r`, is on this side.
    #[inline]
    pub fn matches(self, h: HostId, r: RegionId) -> bool {
        match self {
            Endpoint::Host(x) => x == h,
            Endpoint::Region(x) => x == r,
        }
    }
}

/// A cut (or a degradation) between two endpoints for a period.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Partition {
    /// One side.
    pub a: Endpoint,
    /// The other side.
    pub b: Endpoint,
    /// Start (inclusive).
    pub from_us: Micros,
    /// End (exclusive).
    pub until_us: Micros,
    /// Only `a → b` is affected.
    pub one_way: bool,
    /// Extra latency on the link instead of a cut (0 with `loss == 1.0` is a
    /// full partition).
    pub extra_latency_us: Micros,
    /// Probability of loss on the link during the period (1.0 = cut).
    pub loss: f64,
}

/// The network state.
pub struct Network {
    cfg: NetConfig,
    partitions: Vec<Partition>,
}

impl Network {
    /// A healthy network.
    pub fn new(cfg: NetConfig) -> Self {
        Network { cfg, partitions: Vec::new() }
    }

    /// Adds a partition or link degradation.
    pub fn add_partition(&mut self, p: Partition) {
        assert!(p.from_us <= p.until_us, "partition ends before it starts");
        assert!((0.0..=1.0).contains(&p.loss), "loss is a probability");
        self.partitions.push(p);
    }

    /// The slowest a message can be on the standing links between any two
    /// hosts (latency plus the whole jitter), and `None` when a standing
    /// link may lose messages. Cuts and degradations are not counted: a
    /// caller asks once they are over.
    pub fn worst_standing_us(&self) -> Option<Micros> {
        let links = [self.cfg.intra_region, self.cfg.cross_region];
        if links.iter().any(|l| l.loss > 0.0) {
            return None;
        }
        Some(links.iter().map(|l| l.latency_us + l.jitter_us).max().unwrap_or(0))
    }

    /// Whether a cut or degradation still applies at `now_us` or later.
    pub fn disturbed_from(&self, now_us: Micros) -> bool {
        self.partitions.iter().any(|p| p.until_us > now_us)
    }

    /// The link class between two hosts.
    #[inline]
    pub fn class(from: HostId, fr: RegionId, to: HostId, tr: RegionId) -> LinkClass {
        if from == to {
            LinkClass::Local
        } else if fr == tr {
            LinkClass::IntraRegion
        } else {
            LinkClass::CrossRegion
        }
    }

    /// Latency of a message sent now, or `None` when it is lost.
    #[inline(always)]
    pub fn route(
        &mut self,
        now_us: Micros,
        from: HostId,
        fr: RegionId,
        to: HostId,
        tr: RegionId,
        rng: &mut ChaCha8Rng,
    ) -> Option<Micros> {
        let link = match Network::class(from, fr, to, tr) {
            LinkClass::Local => return Some(0),
            LinkClass::IntraRegion => self.cfg.intra_region,
            LinkClass::CrossRegion => self.cfg.cross_region,
        };
        let mut latency = link.latency_us;
        if link.jitter_us > 0 {
            latency += uniform_inclusive(rng, link.jitter_us);
        }
        if link.loss > 0.0 && rng.random_bool(link.loss) {
            return None;
        }
        if !self.partitions.is_empty() {
            for p in &self.partitions {
                if now_us < p.from_us || now_us >= p.until_us {
                    continue;
                }
                let forward = p.a.matches(from, fr) && p.b.matches(to, tr);
                let backward = !p.one_way && p.b.matches(from, fr) && p.a.matches(to, tr);
                if forward || backward {
                    if p.loss >= 1.0 || (p.loss > 0.0 && rng.random_bool(p.loss)) {
                        return None;
                    }
                    latency += p.extra_latency_us;
                }
            }
        }
        Some(latency)
    }
}

/// `rng.random_range(0..=high)`, inlined: the same draws and the same value
/// as rand's `UniformInt::<u64>::sample_single_inclusive` (the widening
/// multiply with one extra draw when the low half lands in the biased zone),
/// without the call and the range checks on every message.
#[inline(always)]
fn uniform_inclusive(rng: &mut ChaCha8Rng, high: u64) -> u64 {
    let range = high.wrapping_add(1);
    if range == 0 {
        return rng.next_u64();
    }
    let m = u128::from(rng.next_u64()) * u128::from(range);
    let (mut result, lo) = ((m >> 64) as u64, m as u64);
    if lo > range.wrapping_neg() {
        let new_hi = ((u128::from(rng.next_u64()) * u128::from(range)) >> 64) as u64;
        result += u64::from(lo.checked_add(new_hi).is_none());
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn the_inlined_jitter_draw_is_rands_random_range() {
        let mut a = ChaCha8Rng::seed_from_u64(11);
        let mut b = a.clone();
        let mut pick = ChaCha8Rng::seed_from_u64(12);
        for i in 0..200_000u64 {
            let high = match i % 5 {
                0 => pick.random_range(1..=1_000u64),
                1 => pick.random_range(1..=100_000u64),
                2 => u64::MAX - pick.random_range(0..4u64),
                3 => pick.random::<u64>() >> pick.random_range(0..64u32),
                _ => (1u64 << 63) + pick.random_range(0..1_000u64),
            }
            .max(1);
            assert_eq!(uniform_inclusive(&mut a, high), b.random_range(0..=high), "high {high}");
        }
        assert_eq!(a.random::<u64>(), b.random::<u64>(), "the same number of draws");
    }

    #[test]
    fn cross_region_is_slower_and_partitions_cut_for_their_period_only() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut n = Network::new(NetConfig::default());
        let (a, b, c) = (HostId(0), HostId(1), HostId(2));
        let (r0, r1) = (RegionId(0), RegionId(1));
        let intra = n.route(0, a, r0, b, r0, &mut rng).unwrap();
        let cross = n.route(0, a, r0, c, r1, &mut rng).unwrap();
        assert!(cross > 10 * intra);
        n.add_partition(Partition {
            a: Endpoint::Region(r0),
            b: Endpoint::Host(c),
            from_us: 100,
            until_us: 200,
            one_way: true,
            extra_latency_us: 0,
            loss: 1.0,
        });
        assert!(n.route(150, a, r0, c, r1, &mut rng).is_none());
        assert!(n.route(150, c, r1, a, r0, &mut rng).is_some(), "one-way");
        assert!(n.route(200, a, r0, c, r1, &mut rng).is_some(), "healed");
    }
}
