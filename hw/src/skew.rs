//! A meter that is wrong by a fixed percentage: the simulator's misbehaving meter (design.md
//! "Attestation"; seed 000 §VII.B). A socket whose meter over-counts bills energy it did not
//! deliver; a cable whose meter under-reports disputes energy it drew. Both are what the
//! metering checks of the other side must catch.

use crate::{HwError, Meter, MeterReading, PowerMw};
use proto::units::EnergyMwh;

/// Wraps a [`Meter`] and scales its power and energy by `(100 + error_percent) / 100`:
/// `+10` over-counts by 10 %, `-10` under-reports by 10 %. Energy stays non-decreasing.
pub struct SkewedMeter<M> {
    inner: M,
    error_percent: i32,
}

impl<M: Meter> SkewedMeter<M> {
    /// `inner` made wrong by `error_percent` (from -100, reading nothing, upwards).
    /// Errors: [`HwError::Config`] below -100.
    pub fn new(inner: M, error_percent: i32) -> Result<Self, HwError> {
        if error_percent < -100 {
            return Err(HwError::Config(format!(
                "meter error must be at least -100 %, got {error_percent} %"
            )));
        }
        Ok(SkewedMeter {
            inner,
            error_percent,
        })
    }

    fn scale(&self, value: u64) -> u64 {
        let factor = u128::try_from(100 + i64::from(self.error_percent)).unwrap_or(0);
        u64::try_from(u128::from(value) * factor / 100).unwrap_or(u64::MAX)
    }
}

impl<M: Meter> Meter for SkewedMeter<M> {
    fn read(&mut self) -> Result<MeterReading, HwError> {
        let reading = self.inner.read()?;
        Ok(MeterReading {
            at_ms: reading.at_ms,
            power: PowerMw(self.scale(reading.power.0)),
            energy: EnergyMwh(self.scale(reading.energy.0)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(MeterReading);
    impl Meter for Fixed {
        fn read(&mut self) -> Result<MeterReading, HwError> {
            Ok(self.0)
        }
    }

    fn reading() -> MeterReading {
        MeterReading {
            at_ms: 7,
            power: PowerMw(1_000_000),
            energy: EnergyMwh(20_000),
        }
    }

    #[test]
    fn over_and_under_count_by_the_percentage() {
        let over = SkewedMeter::new(Fixed(reading()), 10)
            .unwrap()
            .read()
            .unwrap();
        assert_eq!(
            (over.power, over.energy),
            (PowerMw(1_100_000), EnergyMwh(22_000))
        );
        let under = SkewedMeter::new(Fixed(reading()), -10)
            .unwrap()
            .read()
            .unwrap();
        assert_eq!(
            (under.power, under.energy),
            (PowerMw(900_000), EnergyMwh(18_000))
        );
        let exact = SkewedMeter::new(Fixed(reading()), 0)
            .unwrap()
            .read()
            .unwrap();
        assert_eq!(exact, reading());
        assert!(SkewedMeter::new(Fixed(reading()), -101).is_err());
    }
}
