//! Node tiers, chosen by the collateral a node operator locks.

use serde::{Deserialize, Serialize};

/// 1 FLUX in its smallest unit (like satoshis).
pub const FLUX: u64 = 100_000_000;

/// A node's tier. The collateral decides it; the tier decides the resources a node must offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// 1,000 FLUX.
    Cumulus,
    /// 12,500 FLUX.
    Nimbus,
    /// 40,000 FLUX.
    Stratus,
}

impl Tier {
    /// The tier whose collateral is exactly `amount`, as Flux requires.
    pub fn from_collateral(amount: u64) -> Option<Tier> {
        [Tier::Cumulus, Tier::Nimbus, Tier::Stratus].into_iter().find(|t| t.collateral() == amount)
    }

    /// The collateral this tier locks, in the smallest unit.
    pub fn collateral(self) -> u64 {
        match self {
            Tier::Cumulus => 1_000 * FLUX,
            Tier::Nimbus => 12_500 * FLUX,
            Tier::Stratus => 40_000 * FLUX,
        }
    }

    /// The minimum resources a node of this tier offers (Flux's benchmarks).
    pub fn resources(self) -> Resources {
        match self {
            Tier::Cumulus => Resources { cpu_tenths: 20, ram_mb: 8_000, hdd_gb: 220 },
            Tier::Nimbus => Resources { cpu_tenths: 40, ram_mb: 32_000, hdd_gb: 440 },
            Tier::Stratus => Resources { cpu_tenths: 80, ram_mb: 64_000, hdd_gb: 880 },
        }
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Tier::Cumulus => "cumulus",
            Tier::Nimbus => "nimbus",
            Tier::Stratus => "stratus",
        })
    }
}

/// An amount of cpu, memory and disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Tenths of a core.
    pub cpu_tenths: u32,
    /// Megabytes of memory.
    pub ram_mb: u32,
    /// Gigabytes of disk.
    pub hdd_gb: u32,
}

impl Resources {
    /// Whether `need` fits in what is left of `self`.
    pub fn fits(&self, need: &Resources) -> bool {
        need.cpu_tenths <= self.cpu_tenths && need.ram_mb <= self.ram_mb && need.hdd_gb <= self.hdd_gb
    }

    /// `self` less `used`, never below zero.
    pub fn saturating_sub(&self, used: &Resources) -> Resources {
        Resources {
            cpu_tenths: self.cpu_tenths.saturating_sub(used.cpu_tenths),
            ram_mb: self.ram_mb.saturating_sub(used.ram_mb),
            hdd_gb: self.hdd_gb.saturating_sub(used.hdd_gb),
        }
    }

    /// The sum of two amounts.
    pub fn add(&self, other: &Resources) -> Resources {
        Resources {
            cpu_tenths: self.cpu_tenths + other.cpu_tenths,
            ram_mb: self.ram_mb + other.ram_mb,
            hdd_gb: self.hdd_gb + other.hdd_gb,
        }
    }
}

/// Formats an amount in the smallest unit as FLUX with up to 8 decimals.
pub fn format_flux(amount: u64) -> String {
    let whole = amount / FLUX;
    let frac = amount % FLUX;
    if frac == 0 {
        return format!("{whole}");
    }
    let frac = format!("{frac:08}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tier_by_exact_collateral() {
        assert_eq!(Tier::from_collateral(1_000 * FLUX), Some(Tier::Cumulus));
        assert_eq!(Tier::from_collateral(12_500 * FLUX), Some(Tier::Nimbus));
        assert_eq!(Tier::from_collateral(40_000 * FLUX), Some(Tier::Stratus));
        assert_eq!(Tier::from_collateral(999 * FLUX), None);
    }

    #[test]
    fn formats_flux() {
        assert_eq!(format_flux(3 * FLUX), "3");
        assert_eq!(format_flux(FLUX / 100 * 3), "0.03");
        assert_eq!(format_flux(1), "0.00000001");
    }
}
