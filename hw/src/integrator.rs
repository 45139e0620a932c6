//! Drift-free energy integration: power × time summed in exact integer mW·ms.

use proto::units::{EnergyMwh, PowerMw, MS_PER_HOUR};

/// Sums energy from piecewise-constant power. Integer arithmetic throughout: a billion
/// one-millisecond steps give exactly the energy of one billion-millisecond step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnergyIntegrator {
    mw_ms: u128,
}

impl EnergyIntegrator {
    /// An integrator at zero energy.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add `power` held for `duration_ms`.
    pub fn add(&mut self, power: PowerMw, duration_ms: u64) {
        self.mw_ms += u128::from(power.0) * u128::from(duration_ms);
    }

    /// Energy so far, floored to the mWh (saturating at `u64::MAX` mWh, ~18 TWh).
    pub fn energy(&self) -> EnergyMwh {
        EnergyMwh(u64::try_from(self.mw_ms / MS_PER_HOUR).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_small_steps_equal_one_big_step() {
        let mut small = EnergyIntegrator::new();
        for _ in 0..3_600_000 {
            small.add(PowerMw(1_300_000), 1);
        }
        let mut big = EnergyIntegrator::new();
        big.add(PowerMw(1_300_000), 3_600_000);
        assert_eq!(small, big);
        assert_eq!(big.energy(), EnergyMwh(1_300_000));
    }
}
