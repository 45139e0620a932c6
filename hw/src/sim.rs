//! The hardware simulator: a relay, a meter and a plug sensor sharing one simulated outlet with
//! an appliance behind it.
//!
//! Energy counts only while the relay is closed **and** a cable is plugged in. The appliance's
//! load profile runs on powered time (it toasts only while it has power), the outlet on the
//! clock's time, which may be scaled ([`crate::clock::ScaledClock`]) so that a two-minute toast
//! runs in seconds. Every state change and reading first integrates the load exactly up to now.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::clock::Clock;
use crate::integrator::EnergyIntegrator;
use crate::load::LoadProfile;
use crate::{HwError, Meter, MeterReading, PlugSense, PowerMw, Relay};

struct Outlet {
    clock: Arc<dyn Clock>,
    load: LoadProfile,
    relay_closed: bool,
    plugged: bool,
    /// Powered time of the appliance, the time base of its load profile.
    powered_ms: u64,
    /// Clock time up to which energy has been integrated.
    integrated_to_ms: u64,
    energy: EnergyIntegrator,
}

impl Outlet {
    fn powered(&self) -> bool {
        self.relay_closed && self.plugged
    }

    /// Integrate the load from the last update to the clock's now.
    fn advance(&mut self) -> u64 {
        let now = self.clock.now_ms().max(self.integrated_to_ms);
        if self.powered() {
            let end = self.powered_ms + (now - self.integrated_to_ms);
            while self.powered_ms < end {
                let step_end = self
                    .load
                    .next_change_after(self.powered_ms)
                    .map_or(end, |change| change.min(end));
                self.energy.add(
                    self.load.power_at(self.powered_ms),
                    step_end - self.powered_ms,
                );
                self.powered_ms = step_end;
            }
        }
        self.integrated_to_ms = now;
        now
    }
}

/// A simulated outlet. Hand its [`SimRelay`], [`SimMeter`] and [`SimPlugSense`] to a node, and
/// use the handle itself to plug, unplug or change the appliance. Clones share the outlet.
#[derive(Clone)]
pub struct SimOutlet(Arc<Mutex<Outlet>>);

impl SimOutlet {
    /// An outlet with the relay open, nothing plugged in, and `load` behind the cable.
    pub fn new(load: LoadProfile, clock: Arc<dyn Clock>) -> Self {
        let now = clock.now_ms();
        SimOutlet(Arc::new(Mutex::new(Outlet {
            clock,
            load,
            relay_closed: false,
            plugged: false,
            powered_ms: 0,
            integrated_to_ms: now,
            energy: EnergyIntegrator::new(),
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Outlet> {
        // The outlet's state is valid after any panic (every update is a whole assignment).
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Plug the cable in (`true`) or pull it out (`false`).
    pub fn set_plugged(&self, plugged: bool) {
        let mut outlet = self.lock();
        outlet.advance();
        outlet.plugged = plugged;
    }

    /// Swap the appliance; its powered time starts again at zero.
    pub fn set_load(&self, load: LoadProfile) {
        let mut outlet = self.lock();
        outlet.advance();
        outlet.load = load;
        outlet.powered_ms = 0;
    }

    /// The relay of this outlet.
    pub fn relay(&self) -> SimRelay {
        SimRelay(self.clone())
    }

    /// The meter of this outlet.
    pub fn meter(&self) -> SimMeter {
        SimMeter(self.clone())
    }

    /// The plug sensor of this outlet.
    pub fn plug_sense(&self) -> SimPlugSense {
        SimPlugSense(self.clone())
    }
}

/// The relay of a [`SimOutlet`].
pub struct SimRelay(SimOutlet);

impl Relay for SimRelay {
    fn set_closed(&mut self, closed: bool) -> Result<(), HwError> {
        let mut outlet = self.0.lock();
        outlet.advance();
        outlet.relay_closed = closed;
        Ok(())
    }

    fn is_closed(&self) -> bool {
        self.0.lock().relay_closed
    }
}

/// The meter of a [`SimOutlet`].
pub struct SimMeter(SimOutlet);

impl Meter for SimMeter {
    fn read(&mut self) -> Result<MeterReading, HwError> {
        let mut outlet = self.0.lock();
        let at_ms = outlet.advance();
        let power = if outlet.powered() {
            outlet.load.power_at(outlet.powered_ms)
        } else {
            PowerMw(0)
        };
        Ok(MeterReading {
            at_ms,
            power,
            energy: outlet.energy.energy(),
        })
    }
}

/// The plug sensor of a [`SimOutlet`].
pub struct SimPlugSense(SimOutlet);

impl PlugSense for SimPlugSense {
    fn is_plugged(&mut self) -> Result<bool, HwError> {
        Ok(self.0.lock().plugged)
    }
}
