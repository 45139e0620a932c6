//! The cable's hardware: the relay to its appliance and the cable's own meter (seed 000 §VII.B:
//! the cable needs its own current sensor to check what the socket bills; design.md
//! "Attestation").
//!
//! In the simulator the cable's outlet is its appliance side: the relay is the appliance relay,
//! "plugged" means mains present (the socket's relay closed, as its signed status says), and the
//! meter counts while both hold, the same physical current the socket's meter sees.

use std::sync::Arc;

use serde::Deserialize;

use crate::clock::ScaledClock;
use crate::load::{LoadConfig, LoadProfile};
use crate::sim::SimOutlet;
use crate::skew::SkewedMeter;
use crate::{HwError, Meter, MeterReading, PowerMw, Relay};

/// The cable's `[hw]` in its TOML config (`kind = "sim" | "rpi"`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum CableHwConfig {
    /// The simulator.
    Sim {
        /// Simulated seconds per real second; the socket's outlet must run at the same scale.
        #[serde(default = "default_time_scale")]
        time_scale: f64,
        /// The appliance behind the cable, the same as the socket simulates. Without it the
        /// cable has no meter and does not check the socket's count.
        load: Option<LoadConfig>,
        /// A misbehaving meter: readings off by this many percent (-10 under-reports by 10 %).
        #[serde(default)]
        meter_error_percent: i32,
    },
    /// A Raspberry Pi: the appliance relay on a GPIO pin, an INA219 meter on I2C (runs only when
    /// built with the `rpi` feature; `plug_gpio` is not used on the cable).
    Rpi(crate::rpi_config::RpiConfig),
}

fn default_time_scale() -> f64 {
    1.0
}

impl Default for CableHwConfig {
    fn default() -> Self {
        CableHwConfig::Sim {
            time_scale: default_time_scale(),
            load: None,
            meter_error_percent: 0,
        }
    }
}

/// The relay to the appliance and, when fitted, the cable's meter.
pub struct CableHardware {
    /// Closes once the socket says Paid (paper §VII.A); open is safe.
    pub relay: Box<dyn Relay>,
    meter: Option<Box<dyn Meter>>,
    /// The simulator's appliance side and the appliance it brings to each session.
    sim: Option<(SimOutlet, LoadProfile)>,
}

impl CableHardware {
    /// Open the hardware `config` describes. Errors: a bad setting, or a device that fails.
    pub fn open(config: &CableHwConfig) -> Result<Self, HwError> {
        match config {
            CableHwConfig::Sim {
                time_scale,
                load,
                meter_error_percent,
            } => {
                let clock = Arc::new(ScaledClock::new(*time_scale)?);
                let profile = match load {
                    Some(load) => load.to_profile()?,
                    None => LoadProfile::Constant(PowerMw(0)),
                };
                let outlet = SimOutlet::new(profile.clone(), clock);
                let meter: Option<Box<dyn Meter>> = match load {
                    Some(_) => Some(Box::new(SkewedMeter::new(
                        outlet.meter(),
                        *meter_error_percent,
                    )?)),
                    None => None,
                };
                Ok(CableHardware {
                    relay: Box::new(outlet.relay()),
                    meter,
                    sim: Some((outlet, profile)),
                })
            }
            #[cfg(feature = "rpi")]
            CableHwConfig::Rpi(rpi) => Ok(CableHardware {
                relay: Box::new(crate::rpi::GpioRelay::open(
                    rpi.relay_gpio,
                    rpi.relay_active_low,
                )?),
                meter: Some(Box::new(crate::rpi::open_meter(rpi)?)),
                sim: None,
            }),
            #[cfg(not(feature = "rpi"))]
            CableHwConfig::Rpi(_) => Err(HwError::Config(
                "hw kind \"rpi\" needs cable-node built with --features rpi".into(),
            )),
        }
    }

    /// Whether the cable has a meter of its own.
    pub fn has_meter(&self) -> bool {
        self.meter.is_some()
    }

    /// A new session: the simulator brings a fresh appliance.
    pub fn plug_in(&self) {
        if let Some((outlet, load)) = &self.sim {
            outlet.set_load(load.clone());
        }
    }

    /// Whether mains is present on the cable (the socket's relay is closed). The simulator
    /// counts energy only while it is; real hardware measures it and ignores this.
    pub fn set_mains(&self, present: bool) {
        if let Some((outlet, _)) = &self.sim {
            outlet.set_plugged(present);
        }
    }

    /// Read the cable's meter; `None` without one.
    pub fn read(&mut self) -> Option<Result<MeterReading, HwError>> {
        self.meter.as_mut().map(|meter| meter.read())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cable_without_a_load_has_no_meter_and_one_with_counts_only_with_mains() {
        let mut none = CableHardware::open(&CableHwConfig::default()).unwrap();
        assert!(!none.has_meter());
        assert!(none.read().is_none());

        let config: CableHwConfig = toml::from_str(
            "kind = \"sim\"\ntime_scale = 3600.0\nload = { kind = \"constant\", power_w = 1000.0 }\nmeter_error_percent = -10\n",
        )
        .unwrap();
        let mut cable = CableHardware::open(&config).unwrap();
        cable.plug_in();
        cable.relay.close().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let without_mains = cable.read().unwrap().unwrap();
        assert_eq!(without_mains.energy.0, 0);
        cable.set_mains(true);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let with_mains = cable.read().unwrap().unwrap();
        // 1000 W under-reported by 10 %: 900 W.
        assert_eq!(with_mains.power, PowerMw(900_000));
        assert!(with_mains.energy.0 > 0);
    }
}
