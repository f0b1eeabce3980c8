//! Flux's on-chain minimum price for an app registration or update.
//!
//! 0.03 FLUX per 0.1 core, 0.01 FLUX per 100 MB of memory, 0.004 FLUX per GB of disk, summed over
//! components; that base buys three instances for 88,000 blocks, so one instance costs base / 3,
//! and the total scales with instances and with the lease length.

use crate::spec::{AppSpec, DEFAULT_EXPIRE_BLOCKS};

/// Per 0.1 core, in the smallest unit (0.03 FLUX).
pub const CPU_TENTH_PRICE: u64 = 3_000_000;
/// Per MB of memory (0.01 FLUX per 100 MB).
pub const RAM_MB_PRICE: u64 = 10_000;
/// Per GB of disk (0.004 FLUX).
pub const HDD_GB_PRICE: u64 = 400_000;

/// The minimum payment for `spec`, in the smallest unit, rounded up.
pub fn app_price(spec: &AppSpec) -> u64 {
    let base: u128 = spec
        .components
        .iter()
        .map(|c| {
            u128::from(c.cpu_tenths) * u128::from(CPU_TENTH_PRICE)
                + u128::from(c.ram_mb) * u128::from(RAM_MB_PRICE)
                + u128::from(c.hdd_gb) * u128::from(HDD_GB_PRICE)
        })
        .sum();
    let numerator = base * u128::from(spec.instances) * u128::from(spec.expire);
    let denominator = 3 * u128::from(DEFAULT_EXPIRE_BLOCKS);
    u64::try_from(numerator.div_ceil(denominator)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::spec::ComponentSpec;
    use crate::tier::FLUX;

    fn spec(instances: u32, expire: u32, cpu_tenths: u32, ram_mb: u32, hdd_gb: u32) -> AppSpec {
        AppSpec {
            network: Default::default(),
            name: "p".into(),
            description: String::new(),
            instances,
            geolocation: vec![],
            expire,
            components: vec![ComponentSpec {
                name: "w".into(),
                workload: crate::spec::Workload::Wasm("w".into()),
                cpu_tenths,
                ram_mb,
                hdd_gb,
                env: Default::default(),
                traffic: Default::default(),
            }],
        }
    }

    #[test]
    fn three_instances_for_the_default_lease_cost_the_base() {
        // 1 core + 1000 MB + 10 GB = 0.3 + 0.1 + 0.04 = 0.44 FLUX.
        assert_eq!(app_price(&spec(3, 88_000, 10, 1000, 10)), 44 * FLUX / 100);
        // Six instances for half the lease: the same.
        assert_eq!(app_price(&spec(6, 44_000, 10, 1000, 10)), 44 * FLUX / 100);
    }

    #[test]
    fn hello_example_price() {
        // 0.1 core, 64 MB, 1 GB: base 0.03 + 0.0064 + 0.004 = 0.0404; one instance 0.013466..
        assert_eq!(app_price(&spec(3, 88_000, 1, 64, 1)), 4_040_000);
        assert_eq!(app_price(&spec(1, 88_000, 1, 64, 1)), 1_346_667);
    }

    proptest! {
        #[test]
        fn price_grows_with_every_input(i in 1u32..100, e in 1u32..1_000_000, c in 1u32..150, r in 16u32..59_000, h in 1u32..840) {
            let p = app_price(&spec(i, e, c, r, h));
            prop_assert!(p > 0);
            prop_assert!(app_price(&spec(i + 1, e, c, r, h)) >= p);
            prop_assert!(app_price(&spec(i, e + 1, c, r, h)) >= p);
            prop_assert!(app_price(&spec(i, e, c + 1, r, h)) > p);
            prop_assert!(app_price(&spec(i, e, c, r, h + 1)) > p);
        }
    }
}
