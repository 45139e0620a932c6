//! Real hardware on a Raspberry Pi (feature `rpi`): the outlet relay on a GPIO pin (rppal), the
//! meter on an INA219 over the Pi's I2C bus ([`crate::ina219`]), an optional plug-detect switch on
//! another GPIO pin.
//!
//! The relay is the only thing that can hurt: it is opened on drop, on SIGINT and SIGTERM (then
//! the process exits with 128 + signal), and on panic, before anything else runs.

use std::sync::{Arc, Mutex};

use rppal::gpio::{Gpio, InputPin, Level, OutputPin};
use rppal::i2c::I2c;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::clock::ScaledClock;
use crate::ina219::Ina219Meter;
use crate::rpi_config::RpiConfig;
use crate::{HwError, PlugSense, Relay};

fn gpio_error(e: rppal::gpio::Error) -> HwError {
    HwError::Gpio(e.to_string())
}

/// A relay on a GPIO pin. Opened on drop, SIGINT, SIGTERM and panic.
pub struct GpioRelay {
    pin: Arc<Mutex<OutputPin>>,
    active_low: bool,
    closed: bool,
}

impl GpioRelay {
    /// Take the pin `gpio` (BCM numbering) as an output at the open level and install the
    /// signal and panic handlers that open it. Errors with [`HwError::Gpio`] when the pin is in
    /// use or /dev/gpiomem is missing.
    pub fn open(gpio: u8, active_low: bool) -> Result<Self, HwError> {
        let pin = Gpio::new()
            .map_err(gpio_error)?
            .get(gpio)
            .map_err(gpio_error)?;
        let mut pin = if active_low {
            pin.into_output_high()
        } else {
            pin.into_output_low()
        };
        // Dropping the pin must leave the relay open, not restore whatever level it had before.
        pin.set_reset_on_drop(false);
        let pin = Arc::new(Mutex::new(pin));
        install_safety(Arc::clone(&pin), active_low)?;
        Ok(GpioRelay {
            pin,
            active_low,
            closed: false,
        })
    }
}

fn open_level(active_low: bool) -> Level {
    if active_low {
        Level::High
    } else {
        Level::Low
    }
}

fn drive_open(pin: &Mutex<OutputPin>, active_low: bool) {
    let mut pin = pin.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    pin.write(open_level(active_low));
}

fn install_safety(pin: Arc<Mutex<OutputPin>>, active_low: bool) -> Result<(), HwError> {
    let mut signals = Signals::new([SIGINT, SIGTERM])
        .map_err(|e| HwError::Gpio(format!("installing signal handlers: {e}")))?;
    let on_signal = Arc::clone(&pin);
    std::thread::Builder::new()
        .name("relay-safety".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                drive_open(&on_signal, active_low);
                tracing::warn!(signal, "signal received: relay opened, exiting");
                std::process::exit(128 + signal);
            }
        })
        .map_err(|e| HwError::Gpio(format!("starting the relay safety thread: {e}")))?;
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // try_lock: a panic while the pin is held must not deadlock; the holder only writes a
        // level, so the pin is then already in a defined state.
        if let Ok(mut held) = pin.try_lock() {
            held.write(open_level(active_low));
        }
        previous(info);
    }));
    Ok(())
}

impl Relay for GpioRelay {
    fn set_closed(&mut self, closed: bool) -> Result<(), HwError> {
        let level = if closed == self.active_low {
            Level::Low
        } else {
            Level::High
        };
        self.pin
            .lock()
            .map_err(|_| HwError::Gpio("relay pin lock poisoned".into()))?
            .write(level);
        self.closed = closed;
        Ok(())
    }

    fn is_closed(&self) -> bool {
        self.closed
    }
}

impl Drop for GpioRelay {
    fn drop(&mut self) {
        drive_open(&self.pin, self.active_low);
    }
}

/// A plug-detect switch on a GPIO input pin (high = plugged), with the internal pull-down on.
pub struct GpioPlugSense(InputPin);

impl GpioPlugSense {
    /// Take `gpio` (BCM numbering) as an input.
    pub fn open(gpio: u8) -> Result<Self, HwError> {
        let pin = Gpio::new()
            .map_err(gpio_error)?
            .get(gpio)
            .map_err(gpio_error)?;
        Ok(GpioPlugSense(pin.into_input_pulldown()))
    }
}

impl PlugSense for GpioPlugSense {
    fn is_plugged(&mut self) -> Result<bool, HwError> {
        Ok(self.0.is_high())
    }
}

/// Open the INA219 meter on the Pi's I2C bus `config.i2c_bus`, counting on real time.
pub fn open_meter(config: &RpiConfig) -> Result<Ina219Meter<I2c>, HwError> {
    let i2c = I2c::with_bus(config.i2c_bus).map_err(|e| HwError::I2c(e.to_string()))?;
    Ina219Meter::open(i2c, &config.ina219, Arc::new(ScaledClock::real()))
}
