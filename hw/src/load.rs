//! Load profiles for the simulator: what an appliance draws as a function of the time it has
//! been powered (relay closed and plugged in). Every profile is piecewise constant, so the
//! simulator integrates it exactly.

use std::path::Path;

use proto::units::{EnergyMwh, PowerMw, MS_PER_HOUR};
use serde::Deserialize;

use crate::HwError;

/// The paper's toaster (seed 000 §VII): 1300 W.
pub const TOASTER_POWER: PowerMw = PowerMw(1_300_000);
/// The paper's toaster uses about 40 Wh per batch of toast (seed 000 §VII).
pub const TOASTER_BATCH_ENERGY: EnergyMwh = EnergyMwh(40_000);

/// What the simulated appliance draws.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadProfile {
    /// The same power for as long as it is powered.
    Constant(PowerMw),
    /// A toaster: `power` until each of `batches` batches has drawn `batch_energy`, then it pops
    /// and draws nothing.
    Toaster {
        /// Power while toasting.
        power: PowerMw,
        /// Energy of one batch.
        batch_energy: EnergyMwh,
        /// Number of batches toasted back to back.
        batches: u32,
    },
    /// A recorded trace: each step holds its power from its start until the next step, the last
    /// one for ever (end a trace with a zero-power row to switch the appliance off). Before the
    /// first step the appliance draws nothing.
    Trace(Vec<TraceStep>),
}

/// One step of a load trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceStep {
    /// Powered time at which this power starts, in ms.
    pub start_ms: u64,
    /// Power from `start_ms` to the next step.
    pub power: PowerMw,
}

/// A load as written in a config file (`kind = "constant" | "toaster" | "trace"`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LoadConfig {
    /// Constant power in watts.
    Constant {
        /// Power drawn, in W.
        power_w: f64,
    },
    /// The paper's toaster: 1300 W, 40 Wh per batch.
    Toaster {
        /// Batches toasted back to back (default 1).
        #[serde(default = "one")]
        batches: u32,
    },
    /// Replay of a CSV file with rows `t_s,power_w`.
    Trace {
        /// Path to the CSV file.
        path: std::path::PathBuf,
    },
}

fn one() -> u32 {
    1
}

impl LoadConfig {
    /// Build the profile this config describes (reads the trace file for `trace`).
    pub fn to_profile(&self) -> Result<LoadProfile, HwError> {
        match self {
            LoadConfig::Constant { power_w } => Ok(LoadProfile::Constant(watts_to_mw(*power_w)?)),
            LoadConfig::Toaster { batches } => Ok(LoadProfile::toaster(*batches)),
            LoadConfig::Trace { path } => LoadProfile::from_trace_file(path),
        }
    }
}

fn watts_to_mw(power_w: f64) -> Result<PowerMw, HwError> {
    let mw = power_w * 1_000.0;
    if !(mw.is_finite() && mw >= 0.0 && mw < u64::MAX as f64) {
        return Err(HwError::Config(format!(
            "power must be a non-negative number of watts, got {power_w}"
        )));
    }
    Ok(PowerMw(mw.round() as u64))
}

impl LoadProfile {
    /// The paper's toaster for `batches` batches: 1300 W, 40 Wh each.
    pub fn toaster(batches: u32) -> Self {
        LoadProfile::Toaster {
            power: TOASTER_POWER,
            batch_energy: TOASTER_BATCH_ENERGY,
            batches,
        }
    }

    /// Parse a CSV trace with rows `t_s,power_w` (seconds and watts, decimals allowed).
    /// A header row `t_s,power_w`, blank lines and lines starting with `#` are skipped. Times
    /// must strictly increase; powers must be non-negative. Errors name the line.
    pub fn from_trace_csv(text: &str) -> Result<Self, HwError> {
        let mut steps: Vec<TraceStep> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let row = raw.trim();
            if row.is_empty() || row.starts_with('#') || row.replace(' ', "") == "t_s,power_w" {
                continue;
            }
            let bad = |reason: String| HwError::Trace { line, reason };
            let mut fields = row.split(',').map(str::trim);
            let (Some(t), Some(p), None) = (fields.next(), fields.next(), fields.next()) else {
                return Err(bad(format!("expected `t_s,power_w`, got `{row}`")));
            };
            let t_s: f64 = t
                .parse()
                .map_err(|_| bad(format!("time `{t}` is not a number of seconds")))?;
            let power_w: f64 = p
                .parse()
                .map_err(|_| bad(format!("power `{p}` is not a number of watts")))?;
            if !(t_s.is_finite() && t_s >= 0.0) {
                return Err(bad(format!("time must be >= 0 s, got {t}")));
            }
            let power = watts_to_mw(power_w).map_err(|e| bad(e.to_string()))?;
            let start_ms = (t_s * 1_000.0).round() as u64;
            if let Some(previous) = steps.last() {
                if start_ms <= previous.start_ms {
                    return Err(bad(format!(
                        "time {t} s does not come after the previous row"
                    )));
                }
            }
            steps.push(TraceStep { start_ms, power });
        }
        if steps.is_empty() {
            return Err(HwError::Trace {
                line: 0,
                reason: "the trace has no rows".into(),
            });
        }
        Ok(LoadProfile::Trace(steps))
    }

    /// Read and parse a CSV trace file (see [`LoadProfile::from_trace_csv`]).
    pub fn from_trace_file(path: &Path) -> Result<Self, HwError> {
        let text = std::fs::read_to_string(path).map_err(|source| HwError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_trace_csv(&text)
    }

    /// Power drawn after `powered_ms` of powered time.
    pub fn power_at(&self, powered_ms: u64) -> PowerMw {
        match self {
            LoadProfile::Constant(power) => *power,
            LoadProfile::Toaster { power, .. } => match self.toaster_end_ms() {
                Some(end) if powered_ms < end => *power,
                _ => PowerMw(0),
            },
            LoadProfile::Trace(steps) => steps
                .iter()
                .take_while(|s| s.start_ms <= powered_ms)
                .last()
                .map_or(PowerMw(0), |s| s.power),
        }
    }

    /// The next powered time after `powered_ms` at which the power changes, if any.
    pub fn next_change_after(&self, powered_ms: u64) -> Option<u64> {
        match self {
            LoadProfile::Constant(_) => None,
            LoadProfile::Toaster { .. } => self.toaster_end_ms().filter(|&end| end > powered_ms),
            LoadProfile::Trace(steps) => steps
                .iter()
                .map(|s| s.start_ms)
                .find(|&start| start > powered_ms),
        }
    }

    /// Powered time at which the toaster pops for the last time: the first whole ms at which
    /// all batches have drawn their energy.
    fn toaster_end_ms(&self) -> Option<u64> {
        let LoadProfile::Toaster {
            power,
            batch_energy,
            batches,
        } = self
        else {
            return None;
        };
        if power.0 == 0 {
            return Some(0);
        }
        let total_mw_ms = u128::from(batch_energy.0) * u128::from(*batches) * MS_PER_HOUR;
        Some(u64::try_from(total_mw_ms.div_ceil(u128::from(power.0))).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_parses_and_holds_each_step() {
        let trace = LoadProfile::from_trace_csv("t_s,power_w\n0,100\n# comment\n1.5,2000.5\n3,0\n")
            .unwrap();
        assert_eq!(trace.power_at(0), PowerMw(100_000));
        assert_eq!(trace.power_at(1_499), PowerMw(100_000));
        assert_eq!(trace.power_at(1_500), PowerMw(2_000_500));
        assert_eq!(trace.power_at(3_000), PowerMw(0));
        assert_eq!(trace.next_change_after(0), Some(1_500));
        assert_eq!(trace.next_change_after(1_500), Some(3_000));
        assert_eq!(trace.next_change_after(3_000), None);
    }

    #[test]
    fn bad_traces_name_the_line() {
        for (csv, line) in [
            ("0,100\n1,abc\n", 2),
            ("0,100\n0,200\n", 2),
            ("0,-5\n", 1),
            ("0,1,2\n", 1),
            ("", 0),
        ] {
            match LoadProfile::from_trace_csv(csv) {
                Err(HwError::Trace { line: got, .. }) => assert_eq!(got, line, "{csv:?}"),
                other => panic!("{csv:?}: expected a trace error, got {other:?}"),
            }
        }
    }

    #[test]
    fn toaster_pops_after_its_batches() {
        let toaster = LoadProfile::toaster(2);
        // 80 Wh at 1300 W is 221538.46 ms: it draws through ms 221538 and stops at 221539.
        assert_eq!(toaster.next_change_after(0), Some(221_539));
        assert_eq!(toaster.power_at(221_538), TOASTER_POWER);
        assert_eq!(toaster.power_at(221_539), PowerMw(0));
    }

    #[test]
    fn load_config_from_toml() {
        #[derive(Deserialize)]
        struct File {
            load: LoadConfig,
        }
        let f: File = toml::from_str("[load]\nkind = \"constant\"\npower_w = 60.5\n").unwrap();
        assert_eq!(
            f.load.to_profile().unwrap(),
            LoadProfile::Constant(PowerMw(60_500))
        );
        let f: File = toml::from_str("[load]\nkind = \"toaster\"\n").unwrap();
        assert_eq!(f.load.to_profile().unwrap(), LoadProfile::toaster(1));
        assert!(toml::from_str::<File>("[load]\nkind = \"kettle\"\n").is_err());
    }
}
