//! The simulator counts energy to the mWh: the paper's toaster, a replayed trace, and nothing
//! while the relay is open or the cable is out.

use std::sync::Arc;
use std::time::Duration;

use hw::clock::{Clock, ManualClock, ScaledClock};
use hw::load::{LoadProfile, TOASTER_POWER};
use hw::sim::SimOutlet;
use hw::{EnergyMwh, Meter, PlugSense, PowerMw, Relay};

fn outlet(load: LoadProfile) -> (SimOutlet, ManualClock) {
    let clock = ManualClock::new();
    (SimOutlet::new(load, Arc::new(clock.clone())), clock)
}

#[test]
fn toaster_for_sixty_seconds_is_21_666_mwh() {
    let (outlet, clock) = outlet(LoadProfile::toaster(1));
    outlet.set_plugged(true);
    let mut relay = outlet.relay();
    let mut meter = outlet.meter();
    relay.close().unwrap();
    clock.advance(Duration::from_secs(60));
    let reading = meter.read().unwrap();
    // 1300 W × 60 s = 78 000 J = 21.666… Wh.
    assert_eq!(reading.energy, EnergyMwh(21_666));
    assert_eq!(reading.power, TOASTER_POWER);
    assert_eq!(reading.at_ms, 60_000);
}

#[test]
fn a_batch_of_toast_is_40_wh_then_it_pops() {
    let (outlet, clock) = outlet(LoadProfile::toaster(1));
    outlet.set_plugged(true);
    outlet.relay().close().unwrap();
    let mut meter = outlet.meter();
    clock.advance(Duration::from_secs(300));
    let reading = meter.read().unwrap();
    assert_eq!(reading.energy, EnergyMwh(40_000));
    assert_eq!(reading.power, PowerMw(0));
}

#[test]
fn relay_open_or_unplugged_counts_nothing() {
    let (outlet, clock) = outlet(LoadProfile::Constant(PowerMw(1_000_000)));
    let mut relay = outlet.relay();
    let mut meter = outlet.meter();
    outlet.set_plugged(true);
    clock.advance(Duration::from_secs(3_600));
    assert_eq!(meter.read().unwrap().energy, EnergyMwh(0));
    assert_eq!(meter.read().unwrap().power, PowerMw(0));

    relay.close().unwrap();
    clock.advance(Duration::from_secs(36));
    assert_eq!(meter.read().unwrap().energy, EnergyMwh(10_000));

    outlet.set_plugged(false);
    assert!(!outlet.plug_sense().is_plugged().unwrap());
    clock.advance(Duration::from_secs(36));
    assert_eq!(meter.read().unwrap().energy, EnergyMwh(10_000));

    outlet.set_plugged(true);
    relay.open().unwrap();
    assert!(!relay.is_closed());
    clock.advance(Duration::from_secs(36));
    assert_eq!(meter.read().unwrap().energy, EnergyMwh(10_000));
}

#[test]
fn toaster_time_is_powered_time() {
    // 30 s on, 10 minutes off, then on again: the toaster still has 80.77 s of its batch left.
    let (outlet, clock) = outlet(LoadProfile::toaster(1));
    outlet.set_plugged(true);
    let mut relay = outlet.relay();
    let mut meter = outlet.meter();
    relay.close().unwrap();
    clock.advance(Duration::from_secs(30));
    relay.open().unwrap();
    clock.advance(Duration::from_secs(600));
    relay.close().unwrap();
    clock.advance(Duration::from_secs(60));
    let reading = meter.read().unwrap();
    assert_eq!(reading.energy, EnergyMwh(32_500)); // 1300 W × 90 s
    assert_eq!(reading.power, TOASTER_POWER);
}

#[test]
fn trace_replay_integrates_each_step() {
    let trace =
        LoadProfile::from_trace_csv("t_s,power_w\n0,100\n10,2000\n12.5,0.5\n20,0\n").unwrap();
    let (outlet, clock) = outlet(trace);
    outlet.set_plugged(true);
    outlet.relay().close().unwrap();
    let mut meter = outlet.meter();
    // Read at uneven times across step boundaries; the total must not depend on them.
    for ms in [3_333, 7_000, 2_100, 1_000, 7_567, 100_000] {
        clock.advance(Duration::from_millis(ms));
        meter.read().unwrap();
    }
    // 100 W × 10 s + 2000 W × 2.5 s + 0.5 W × 7.5 s = 6003.75 J = 1667.708 mWh.
    assert_eq!(meter.read().unwrap().energy, EnergyMwh(1_667));
}

#[test]
fn trace_file_replay() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kettle.csv");
    std::fs::write(&path, "t_s,power_w\n0,2200\n90,0\n").unwrap();
    let (outlet, clock) = outlet(LoadProfile::from_trace_file(&path).unwrap());
    outlet.set_plugged(true);
    outlet.relay().close().unwrap();
    clock.advance(Duration::from_secs(600));
    assert_eq!(outlet.meter().read().unwrap().energy, EnergyMwh(55_000));
}

#[test]
fn a_week_of_one_ms_steps_does_not_drift() {
    let (outlet, clock) = outlet(LoadProfile::Constant(PowerMw(7)));
    outlet.set_plugged(true);
    outlet.relay().close().unwrap();
    let mut meter = outlet.meter();
    for _ in 0..1_000_000 {
        clock.advance(Duration::from_millis(1));
        meter.read().unwrap();
    }
    clock.advance(Duration::from_secs(7 * 24 * 3_600) - Duration::from_millis(1_000_000));
    // 7 mW for 168 h = 1176 mWh exactly.
    assert_eq!(meter.read().unwrap().energy, EnergyMwh(1_176));
}

#[test]
fn time_scale_makes_a_two_minute_toast_run_in_seconds() {
    let clock = ScaledClock::new(120.0).unwrap();
    let outlet = SimOutlet::new(LoadProfile::toaster(1), Arc::new(clock.clone()));
    outlet.set_plugged(true);
    outlet.relay().close().unwrap();
    let mut meter = outlet.meter();
    // Simulated time runs 120 × faster: the 110.8 s toast takes under a second of real time.
    while meter.read().unwrap().power != PowerMw(0) {
        assert!(clock.now_ms() < 200_000, "toast never finished");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(meter.read().unwrap().energy, EnergyMwh(40_000));
}
