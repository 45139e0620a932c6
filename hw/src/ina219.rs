//! A [`Meter`] on an INA219 current/power monitor (the `ina219` driver crate) over any
//! embedded-hal 1.0 I2C bus: rppal's on a Raspberry Pi, embedded-hal-mock's in tests.
//!
//! The INA219 measures instant power only; energy is integrated here by holding each sample's
//! power until the next reading (the meter should be read at least every few hundred ms).

use std::sync::Arc;

use embedded_hal::i2c::I2c;
use ina219::address::Address;
use ina219::calibration::{IntCalibration, MicroAmpere};
use ina219::SyncIna219;
use serde::Deserialize;

use crate::clock::Clock;
use crate::integrator::EnergyIntegrator;
use crate::{HwError, Meter, MeterReading, PowerMw};

/// Calibration of an INA219 meter, as written in a node's TOML config.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ina219Config {
    /// 7-bit I2C address of the chip (0x40 to 0x4F; 0x40 with A0 and A1 grounded).
    #[serde(default = "default_address")]
    pub address: u8,
    /// Shunt resistor in µΩ (100 000 µΩ = the 0.1 Ω of common breakout boards).
    #[serde(default = "default_shunt")]
    pub shunt_micro_ohm: u32,
    /// Value of the current register's least significant bit, in µA. With the shunt it fixes the
    /// calibration register: 40.96 / (current_lsb × shunt) must fit in 16 bits (INA219 datasheet
    /// §8.5.1).
    #[serde(default = "default_current_lsb")]
    pub current_lsb_micro_amp: i64,
    /// Outlet power per sensor power: 1.0 when the INA219 carries the load current itself, the
    /// transformer ratio when it sits behind a current transformer.
    #[serde(default = "default_power_scale")]
    pub power_scale: f64,
}

fn default_address() -> u8 {
    0x40
}
fn default_shunt() -> u32 {
    100_000
}
fn default_current_lsb() -> i64 {
    100
}
fn default_power_scale() -> f64 {
    1.0
}

impl Default for Ina219Config {
    fn default() -> Self {
        Ina219Config {
            address: default_address(),
            shunt_micro_ohm: default_shunt(),
            current_lsb_micro_amp: default_current_lsb(),
            power_scale: default_power_scale(),
        }
    }
}

impl Ina219Config {
    fn calibration(&self) -> Result<IntCalibration, HwError> {
        IntCalibration::new(
            MicroAmpere(self.current_lsb_micro_amp),
            self.shunt_micro_ohm,
        )
        .ok_or_else(|| {
            HwError::Config(format!(
                "INA219 calibration out of range: current LSB {} µA with a {} µΩ shunt",
                self.current_lsb_micro_amp, self.shunt_micro_ohm
            ))
        })
    }
}

/// An energy meter on an INA219.
pub struct Ina219Meter<I2C: I2c> {
    device: SyncIna219<I2C, IntCalibration>,
    power_scale: f64,
    clock: Arc<dyn Clock>,
    energy: EnergyIntegrator,
    last_power: PowerMw,
    last_ms: u64,
}

impl<I2C: I2c> Ina219Meter<I2C> {
    /// Reset the chip on `i2c`, write the calibration of `config`, and start counting energy
    /// at zero. Errors: [`HwError::Config`] for a calibration out of range or a bad address,
    /// [`HwError::I2c`] when the chip does not answer as an INA219.
    pub fn open(i2c: I2C, config: &Ina219Config, clock: Arc<dyn Clock>) -> Result<Self, HwError> {
        if !(config.power_scale.is_finite() && config.power_scale > 0.0) {
            return Err(HwError::Config(format!(
                "INA219 power_scale must be positive, got {}",
                config.power_scale
            )));
        }
        let address = Address::from_byte(config.address).map_err(|_| {
            HwError::Config(format!(
                "0x{:02x} is not an INA219 address (0x40 to 0x4F)",
                config.address
            ))
        })?;
        let device =
            SyncIna219::new_calibrated(i2c, address, config.calibration()?).map_err(|e| {
                HwError::I2c(format!(
                    "INA219 at 0x{:02x}: {:?}",
                    config.address, e.reason
                ))
            })?;
        let last_ms = clock.now_ms();
        Ok(Ina219Meter {
            device,
            power_scale: config.power_scale,
            clock,
            energy: EnergyIntegrator::new(),
            last_power: PowerMw(0),
            last_ms,
        })
    }

    /// Give the I2C bus back.
    pub fn release(self) -> I2C {
        self.device.destroy()
    }
}

impl<I2C: I2c + Send> Meter for Ina219Meter<I2C> {
    fn read(&mut self) -> Result<MeterReading, HwError> {
        let measurement = self
            .device
            .next_measurement()
            .map_err(|e| HwError::I2c(format!("INA219 measurement: {e:?}")))?;
        let now = self.clock.now_ms().max(self.last_ms);
        // Energy up to now at the power last seen; then take the new sample.
        self.energy.add(self.last_power, now - self.last_ms);
        self.last_ms = now;
        if let Some(m) = measurement {
            // Power register in µW; negative readings (reversed shunt) count as no power.
            let micro_watt = m.power.0.max(0) as f64 * self.power_scale;
            self.last_power = PowerMw((micro_watt / 1_000.0).round() as u64);
        }
        Ok(MeterReading {
            at_ms: now,
            power: self.last_power,
            energy: self.energy.energy(),
        })
    }
}
