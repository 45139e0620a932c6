//! One outlet's hardware: relay, meter, plug sensor and clock, from its `[outlets.hw]`
//! (the simulator, or a Raspberry Pi with the `rpi` feature).

use std::sync::Arc;
use std::time::Duration;

use hw::clock::{Clock, ScaledClock};
use hw::load::LoadProfile;
use hw::sim::SimOutlet;
use hw::{Meter, PlugSense, Relay};

use crate::config::HwConfig;

/// The relay, meter and plug sensor of one outlet.
pub(crate) struct Hardware {
    pub(crate) relay: Box<dyn Relay>,
    pub(crate) meter: Box<dyn Meter>,
    /// A plug sensor; `None` on the simulator. A cable counts as plugged in while it holds a
    /// signed `WatchStatus` stream and, with a sensor, while the sensor says so.
    pub(crate) plug: Option<Box<dyn PlugSense>>,
    /// The simulator's outlet and appliance: each plug-in brings a fresh appliance.
    pub(crate) sim: Option<(SimOutlet, LoadProfile)>,
    /// The outlet's clock (the simulator's time scale speeds it up with the meter).
    pub(crate) clock: Arc<dyn Clock>,
    /// How long (real time) the link may be gone before it counts as an unplug (simulator).
    pub(crate) link_debounce: Duration,
}

impl Hardware {
    /// Open the hardware `config` describes.
    pub(crate) fn open(config: &HwConfig) -> anyhow::Result<Self> {
        match config {
            HwConfig::Sim {
                time_scale,
                load,
                link_debounce_ms,
                meter_error_percent,
            } => {
                let clock = ScaledClock::new(*time_scale)?;
                let load = load.to_profile()?;
                let outlet = SimOutlet::new(load.clone(), Arc::new(clock.clone()));
                // The appliance is behind the cable: plugged whenever the outlet asks.
                outlet.set_plugged(true);
                Ok(Hardware {
                    relay: Box::new(outlet.relay()),
                    meter: Box::new(hw::skew::SkewedMeter::new(
                        outlet.meter(),
                        *meter_error_percent,
                    )?),
                    plug: None,
                    sim: Some((outlet, load)),
                    clock: Arc::new(clock),
                    link_debounce: Duration::from_millis(*link_debounce_ms),
                })
            }
            #[cfg(feature = "rpi")]
            HwConfig::Rpi(rpi) => {
                let relay = hw::rpi::GpioRelay::open(rpi.relay_gpio, rpi.relay_active_low)?;
                let meter = hw::rpi::open_meter(rpi)?;
                let plug: Option<Box<dyn PlugSense>> = match rpi.plug_gpio {
                    Some(pin) => Some(Box::new(hw::rpi::GpioPlugSense::open(pin)?)),
                    None => None,
                };
                anyhow::ensure!(plug.is_some(), "hw.plug_gpio is required on a Raspberry Pi");
                Ok(Hardware {
                    relay: Box::new(relay),
                    meter: Box::new(meter),
                    plug,
                    sim: None,
                    clock: Arc::new(ScaledClock::real()),
                    link_debounce: Duration::ZERO,
                })
            }
            #[cfg(not(feature = "rpi"))]
            HwConfig::Rpi(_) => {
                anyhow::bail!("hw kind \"rpi\" needs socket-node built with --features rpi")
            }
        }
    }
}
