//! Hardware of a t2t device: the relay that switches the outlet, the meter that measures what
//! flows through it, and the sensor that tells whether a cable is plugged in (design.md,
//! workspace table; paper seed 000 §III, §VII).
//!
//! - Traits [`Relay`], [`Meter`], [`PlugSense`], implemented by every backend.
//! - [`sim`]: a faithful simulator (constant load, the paper's 1300 W toaster, CSV trace replay)
//!   with a time scale, so that a two-minute toast runs in seconds.
//! - [`skew`]: a meter off by a percentage (a misbehaving socket or cable, for the checks).
//! - [`cable`]: the cable's appliance relay and its own meter (seed 000 §VII.B).
//! - [`ina219`]: meter glue for an INA219 current/power monitor on any embedded-hal I2C bus.
//! - `rpi` (feature `rpi`): a relay on a Raspberry Pi GPIO pin and the INA219 on its I2C bus.
//!
//! Energy is integrated by [`integrator::EnergyIntegrator`] in exact integer mW·ms, so long runs
//! do not drift.

#![deny(missing_docs)]

pub mod cable;
pub mod clock;
pub mod ina219;
pub mod integrator;
pub mod load;
#[cfg(feature = "rpi")]
pub mod rpi;
pub mod rpi_config;
pub mod sim;
pub mod skew;

pub use proto::units::{EnergyMwh, PowerMw};

/// An error of a hardware backend. The caller must treat the outlet as unsafe: open the relay.
#[derive(Debug, thiserror::Error)]
pub enum HwError {
    /// A GPIO pin could not be opened or driven.
    #[error("GPIO: {0}")]
    Gpio(String),
    /// The I2C bus or the device on it failed.
    #[error("I2C: {0}")]
    I2c(String),
    /// A CSV load trace is malformed; `line` counts from 1.
    #[error("load trace line {line}: {reason}")]
    Trace {
        /// Line of the trace file, from 1.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A hardware setting is out of range.
    #[error("hardware config: {0}")]
    Config(String),
    /// Reading a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// The outlet's relay. Open means no current flows; the safe state of every backend.
pub trait Relay: Send {
    /// Close (`true`, energise the outlet) or open (`false`) the relay.
    fn set_closed(&mut self, closed: bool) -> Result<(), HwError>;

    /// Whether the relay is closed, as last set.
    fn is_closed(&self) -> bool;

    /// Close the relay: current may flow.
    fn close(&mut self) -> Result<(), HwError> {
        self.set_closed(true)
    }

    /// Open the relay: no current flows.
    fn open(&mut self) -> Result<(), HwError> {
        self.set_closed(false)
    }
}

/// One reading of a [`Meter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeterReading {
    /// When the reading was taken, in ms on the meter's clock (simulated time for `sim`).
    pub at_ms: u64,
    /// Instant power through the outlet.
    pub power: PowerMw,
    /// Energy through the outlet since the meter was created, floored to the mWh.
    pub energy: EnergyMwh,
}

/// An energy meter: instant power and cumulative energy.
pub trait Meter: Send {
    /// Take a reading. Cumulative energy never decreases between readings.
    fn read(&mut self) -> Result<MeterReading, HwError>;
}

/// Senses whether a cable (or appliance) is plugged into the outlet.
pub trait PlugSense: Send {
    /// `true` while something is plugged in.
    fn is_plugged(&mut self) -> Result<bool, HwError>;
}
