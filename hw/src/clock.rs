//! Clocks for meters and simulators, in milliseconds since the clock started.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A monotonic clock in ms since it started. Simulated clocks may run faster than real time.
pub trait Clock: Send + Sync {
    /// Milliseconds since the clock started, never decreasing.
    fn now_ms(&self) -> u64;
}

/// Real time multiplied by a scale: with `scale = 60.0`, one real second is one simulated minute.
///
/// Each reading is computed from the start instant, not accumulated, so it does not drift.
#[derive(Debug, Clone)]
pub struct ScaledClock {
    start: Instant,
    scale: f64,
}

impl ScaledClock {
    /// A clock running `scale` times faster than real time. `scale` must be finite and > 0.
    pub fn new(scale: f64) -> Result<Self, crate::HwError> {
        if !(scale.is_finite() && scale > 0.0) {
            return Err(crate::HwError::Config(format!(
                "time scale must be a positive number, got {scale}"
            )));
        }
        Ok(ScaledClock {
            start: Instant::now(),
            scale,
        })
    }

    /// A clock at real time (scale 1).
    pub fn real() -> Self {
        ScaledClock {
            start: Instant::now(),
            scale: 1.0,
        }
    }

    /// The time scale.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Simulated ms after `real_elapsed` of real time.
    pub fn sim_ms_after(&self, real_elapsed: Duration) -> u64 {
        (real_elapsed.as_secs_f64() * 1_000.0 * self.scale) as u64
    }

    /// Real time it takes for `sim` of simulated time to pass.
    pub fn real_duration(&self, sim: Duration) -> Duration {
        sim.div_f64(self.scale)
    }
}

impl Clock for ScaledClock {
    fn now_ms(&self) -> u64 {
        self.sim_ms_after(self.start.elapsed())
    }
}

/// A clock that moves only when told to, for exact tests. Clones share the same time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// A clock at 0 ms.
    pub fn new() -> Self {
        Self::default()
    }

    /// Move the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_clock_math() {
        let clock = ScaledClock::new(60.0).unwrap();
        assert_eq!(clock.sim_ms_after(Duration::from_secs(2)), 120_000);
        assert_eq!(
            clock.real_duration(Duration::from_secs(120)),
            Duration::from_secs(2)
        );
        assert!(ScaledClock::new(0.0).is_err());
        assert!(ScaledClock::new(f64::NAN).is_err());
    }

    #[test]
    fn manual_clock_is_shared() {
        let a = ManualClock::new();
        let b = a.clone();
        a.advance(Duration::from_millis(1_500));
        assert_eq!(b.now_ms(), 1_500);
    }
}
