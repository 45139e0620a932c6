//! Units of the t2t protocol (design.md, "Units and names"): energy in mWh, power in mW, price in
//! msat per Wh, amounts in msat (and `bitcoin::Amount` in sat on chain).
//!
//! Every operation that can overflow is checked and returns [`UnitsError`]; nothing wraps or
//! saturates silently. Conversions that must round do so in the direction that never lets a
//! payer pay less than the energy it buys: the cost of energy rounds **up**, the energy an amount
//! buys rounds **down**.

use std::fmt;
use std::time::Duration;

use bitcoin::Amount;

/// Milliwatt-hours in one watt-hour.
pub const MWH_PER_WH: u64 = 1_000;
/// Milliwatts in one watt.
pub const MW_PER_W: u64 = 1_000;
/// msat in one sat.
pub const MSAT_PER_SAT: u64 = 1_000;
/// Milliseconds in one hour: energy in mWh = power in mW × time in ms / `MS_PER_HOUR`.
pub const MS_PER_HOUR: u128 = 3_600_000;

/// An arithmetic error in unit math. Always a sign of bad input or a bad peer, never rounded away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UnitsError {
    /// The result does not fit in 64 bits.
    #[error("{0} overflows u64")]
    Overflow(&'static str),
    /// A subtraction would go below zero.
    #[error("{0} would be negative")]
    Underflow(&'static str),
    /// A price of zero msat per Wh cannot buy a finite quota.
    #[error("price is zero msat per Wh")]
    ZeroPrice,
}

/// An amount of energy in milliwatt-hours (mWh).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EnergyMwh(pub u64);

/// An instant power in milliwatts (mW).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PowerMw(pub u64);

/// A price in millisatoshi per watt-hour (msat/Wh).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PriceMsatPerWh(pub u64);

/// An amount in millisatoshi (msat), the unit of Lightning (BOLT 11) and of our prices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AmountMsat(pub u64);

fn narrow(value: u128, what: &'static str) -> Result<u64, UnitsError> {
    u64::try_from(value).map_err(|_| UnitsError::Overflow(what))
}

impl EnergyMwh {
    /// Zero energy.
    pub const ZERO: EnergyMwh = EnergyMwh(0);

    /// `wh` watt-hours. Errors with [`UnitsError::Overflow`] past `u64::MAX` mWh.
    pub fn from_wh(wh: u64) -> Result<Self, UnitsError> {
        wh.checked_mul(MWH_PER_WH)
            .map(EnergyMwh)
            .ok_or(UnitsError::Overflow("energy in mWh"))
    }

    /// The energy as whole and fractional watt-hours, for display.
    pub fn as_wh_f64(self) -> f64 {
        self.0 as f64 / MWH_PER_WH as f64
    }

    /// `self + other`, or [`UnitsError::Overflow`].
    pub fn checked_add(self, other: EnergyMwh) -> Result<Self, UnitsError> {
        self.0
            .checked_add(other.0)
            .map(EnergyMwh)
            .ok_or(UnitsError::Overflow("energy in mWh"))
    }

    /// `self - other`, or [`UnitsError::Underflow`].
    pub fn checked_sub(self, other: EnergyMwh) -> Result<Self, UnitsError> {
        self.0
            .checked_sub(other.0)
            .map(EnergyMwh)
            .ok_or(UnitsError::Underflow("energy in mWh"))
    }

    /// `self - other`, or zero when `other` is larger (energy left of a quota that was overrun).
    pub fn saturating_sub(self, other: EnergyMwh) -> Self {
        EnergyMwh(self.0.saturating_sub(other.0))
    }
}

impl fmt::Display for EnergyMwh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.3} Wh", self.as_wh_f64())
    }
}

impl PowerMw {
    /// `w` watts. Errors with [`UnitsError::Overflow`] past `u64::MAX` mW.
    pub fn from_w(w: u64) -> Result<Self, UnitsError> {
        w.checked_mul(MW_PER_W)
            .map(PowerMw)
            .ok_or(UnitsError::Overflow("power in mW"))
    }

    /// The power as watts, for display.
    pub fn as_w_f64(self) -> f64 {
        self.0 as f64 / MW_PER_W as f64
    }

    /// Energy drawn at this constant power for `duration`, in mW·ms (exact; divide by
    /// [`MS_PER_HOUR`] for mWh). Summing these keeps an integrator free of drift.
    pub fn mw_ms_over(self, duration: Duration) -> u128 {
        u128::from(self.0) * duration.as_millis()
    }
}

impl fmt::Display for PowerMw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.1} W", self.as_w_f64())
    }
}

impl PriceMsatPerWh {
    /// The cost of `energy` at this price, in msat, rounded **up** to the next msat so that a
    /// payer never pays less than the energy it draws. Errors with [`UnitsError::Overflow`] when
    /// the cost exceeds `u64::MAX` msat.
    pub fn cost_of(self, energy: EnergyMwh) -> Result<AmountMsat, UnitsError> {
        let product = u128::from(self.0) * u128::from(energy.0);
        narrow(product.div_ceil(u128::from(MWH_PER_WH)), "cost in msat").map(AmountMsat)
    }

    /// The energy `amount` buys at this price, rounded **down** to the mWh. Errors with
    /// [`UnitsError::ZeroPrice`] for a zero price and [`UnitsError::Overflow`] when the energy
    /// exceeds `u64::MAX` mWh. For every result, `cost_of(energy_for(a)) <= a`.
    pub fn energy_for(self, amount: AmountMsat) -> Result<EnergyMwh, UnitsError> {
        if self.0 == 0 {
            return Err(UnitsError::ZeroPrice);
        }
        let energy = u128::from(amount.0) * u128::from(MWH_PER_WH) / u128::from(self.0);
        narrow(energy, "energy in mWh").map(EnergyMwh)
    }
}

impl fmt::Display for PriceMsatPerWh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} msat/Wh", self.0)
    }
}

impl AmountMsat {
    /// `sat` satoshi. Errors with [`UnitsError::Overflow`] past `u64::MAX` msat.
    pub fn from_sat(sat: u64) -> Result<Self, UnitsError> {
        sat.checked_mul(MSAT_PER_SAT)
            .map(AmountMsat)
            .ok_or(UnitsError::Overflow("amount in msat"))
    }

    /// The on-chain amount that pays at least this much: whole sat, rounded **up**.
    pub fn to_amount_ceil(self) -> Amount {
        Amount::from_sat(self.0.div_ceil(MSAT_PER_SAT))
    }

    /// `self + other`, or [`UnitsError::Overflow`].
    pub fn checked_add(self, other: AmountMsat) -> Result<Self, UnitsError> {
        self.0
            .checked_add(other.0)
            .map(AmountMsat)
            .ok_or(UnitsError::Overflow("amount in msat"))
    }
}

impl TryFrom<Amount> for AmountMsat {
    type Error = UnitsError;

    /// The on-chain `amount` in msat; errors with [`UnitsError::Overflow`] past `u64::MAX` msat.
    fn try_from(amount: Amount) -> Result<Self, UnitsError> {
        AmountMsat::from_sat(amount.to_sat())
    }
}

impl fmt::Display for AmountMsat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} msat", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn paper_toast_costs() {
        // 8 Wh quota at 125 msat/Wh = 1000 msat = 1 sat.
        let quota = EnergyMwh::from_wh(8).unwrap();
        let cost = PriceMsatPerWh(125).cost_of(quota).unwrap();
        assert_eq!(cost, AmountMsat(1_000));
        assert_eq!(cost.to_amount_ceil(), Amount::from_sat(1));
    }

    #[test]
    fn cost_rounds_up_to_the_msat() {
        // 1 mWh at 1 msat/Wh is a thousandth of a msat: the payer pays 1 msat.
        assert_eq!(PriceMsatPerWh(1).cost_of(EnergyMwh(1)), Ok(AmountMsat(1)));
        assert_eq!(PriceMsatPerWh(1).cost_of(EnergyMwh(0)), Ok(AmountMsat(0)));
        assert_eq!(AmountMsat(1_001).to_amount_ceil(), Amount::from_sat(2));
    }

    #[test]
    fn overflow_is_an_error() {
        assert_eq!(
            PriceMsatPerWh(u64::MAX).cost_of(EnergyMwh(2_000)),
            Err(UnitsError::Overflow("cost in msat"))
        );
        assert!(EnergyMwh::from_wh(u64::MAX).is_err());
        assert!(EnergyMwh(u64::MAX).checked_add(EnergyMwh(1)).is_err());
        assert_eq!(
            EnergyMwh(1).checked_sub(EnergyMwh(2)),
            Err(UnitsError::Underflow("energy in mWh"))
        );
        assert_eq!(
            PriceMsatPerWh(0).energy_for(AmountMsat(5)),
            Err(UnitsError::ZeroPrice)
        );
    }

    #[test]
    fn power_over_time_is_exact() {
        // 1300 W for one hour is 1300 Wh.
        let mw_ms = PowerMw::from_w(1_300)
            .unwrap()
            .mw_ms_over(Duration::from_secs(3_600));
        assert_eq!(mw_ms / MS_PER_HOUR, 1_300_000);
    }

    proptest! {
        #[test]
        fn cost_is_the_exact_ceiling(price in any::<u64>(), energy in any::<u64>()) {
            let exact = u128::from(price) * u128::from(energy);
            match PriceMsatPerWh(price).cost_of(EnergyMwh(energy)) {
                Ok(AmountMsat(cost)) => {
                    let cost = u128::from(cost);
                    prop_assert!(cost * 1_000 >= exact);
                    prop_assert!(cost == 0 || (cost - 1) * 1_000 < exact);
                }
                Err(e) => {
                    prop_assert_eq!(e, UnitsError::Overflow("cost in msat"));
                    prop_assert!(exact.div_ceil(1_000) > u128::from(u64::MAX));
                }
            }
        }

        #[test]
        fn energy_bought_never_costs_more_than_paid(price in 1..u64::MAX, amount in any::<u64>()) {
            if let Ok(energy) = PriceMsatPerWh(price).energy_for(AmountMsat(amount)) {
                let cost = PriceMsatPerWh(price).cost_of(energy).unwrap();
                prop_assert!(cost.0 <= amount);
                // The energy is the most the amount buys: one more mWh costs more than it.
                if let Ok(more) = PriceMsatPerWh(price).cost_of(EnergyMwh(energy.0 + 1)) {
                    prop_assert!(more.0 > amount);
                }
            }
        }
    }
}
