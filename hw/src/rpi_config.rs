//! Settings of a Raspberry Pi outlet, readable from a config file whether or not the `rpi`
//! feature (the device code) is built.

use serde::Deserialize;

use crate::ina219::Ina219Config;

/// Pins and buses of a Raspberry Pi outlet, as written in a node's TOML config (`[hw.rpi]`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RpiConfig {
    /// BCM number of the GPIO pin that drives the relay.
    pub relay_gpio: u8,
    /// `true` when the relay board closes on a low pin (most opto-isolated boards).
    #[serde(default)]
    pub relay_active_low: bool,
    /// I2C bus of the meter (1 on every Pi since model B rev 2).
    #[serde(default = "default_i2c_bus")]
    pub i2c_bus: u8,
    /// The INA219's address and calibration.
    #[serde(default)]
    pub ina219: Ina219Config,
    /// BCM number of a GPIO pin that reads high while a cable is plugged in, if fitted.
    pub plug_gpio: Option<u8>,
}

fn default_i2c_bus() -> u8 {
    1
}
