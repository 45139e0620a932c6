//! The INA219 meter glue against a scripted I2C bus (embedded-hal-mock): the driver's init
//! sequence, calibration, measurements turned into power and integrated energy, and errors.

use std::sync::Arc;
use std::time::Duration;

use embedded_hal::i2c::ErrorKind;
use embedded_hal_mock::eh1::i2c::{Mock as I2cMock, Transaction};
use hw::clock::ManualClock;
use hw::ina219::{Ina219Config, Ina219Meter};
use hw::{EnergyMwh, HwError, Meter, PowerMw};

const ADDR: u8 = 0x40;

/// Reset (config register 0x00 with the reset bit), read back the default configuration,
/// write the calibration register 0x05 (40.96 / (100 µA × 0.1 Ω) = 4096).
fn init() -> Vec<Transaction> {
    vec![
        Transaction::write(ADDR, vec![0x00, 0xB9, 0x9F]),
        Transaction::write_read(ADDR, vec![0x00], vec![0x39, 0x9F]),
        Transaction::write(ADDR, vec![0x05, 0x10, 0x00]),
    ]
}

/// One measurement: bus voltage (0x02), power (0x03), shunt voltage (0x01), current (0x04).
fn measurement(bus: u16, power: u16, shunt: u16, current: u16) -> Vec<Transaction> {
    let mut t = vec![Transaction::transaction_start(ADDR)];
    for (reg, value) in [(0x02, bus), (0x03, power), (0x01, shunt), (0x04, current)] {
        t.push(Transaction::write(ADDR, vec![reg]));
        t.push(Transaction::read(ADDR, value.to_be_bytes().to_vec()));
    }
    t.push(Transaction::transaction_end(ADDR));
    t
}

/// 12 V bus with the conversion-ready bit, 12 W (power LSB = 20 × 100 µA = 2 mW), 1 A.
fn twelve_watts() -> Vec<Transaction> {
    measurement((3_000 << 3) | 0b10, 6_000, 10_000, 10_000)
}

#[test]
fn reads_power_and_integrates_energy() {
    let mut script = init();
    script.extend(twelve_watts());
    script.extend(twelve_watts());
    // No new conversion: bus voltage without the ready bit; the last power holds.
    script.extend(measurement(3_000 << 3, 0, 0, 0));
    let mut bus = I2cMock::new(&script);
    let clock = ManualClock::new();
    let config = Ina219Config {
        power_scale: 2.0,
        ..Ina219Config::default()
    };
    let mut meter = Ina219Meter::open(bus.clone(), &config, Arc::new(clock.clone())).unwrap();

    let first = meter.read().unwrap();
    assert_eq!(first.power, PowerMw(24_000)); // 12 W sensed × power_scale 2
    assert_eq!(first.energy, EnergyMwh(0));

    clock.advance(Duration::from_secs(150));
    let second = meter.read().unwrap();
    assert_eq!(second.energy, EnergyMwh(1_000)); // 24 W × 150 s = 1 Wh

    clock.advance(Duration::from_secs(150));
    let third = meter.read().unwrap();
    assert_eq!(third.power, PowerMw(24_000));
    assert_eq!(third.energy, EnergyMwh(2_000));
    assert_eq!(third.at_ms, 300_000);

    drop(meter);
    bus.done();
}

#[test]
fn bus_errors_are_reported() {
    let script =
        vec![Transaction::write(ADDR, vec![0x00, 0xB9, 0x9F]).with_error(ErrorKind::Other)];
    let mut bus = I2cMock::new(&script);
    match Ina219Meter::open(
        bus.clone(),
        &Ina219Config::default(),
        Arc::new(ManualClock::new()),
    ) {
        Err(HwError::I2c(reason)) => assert!(reason.contains("0x40"), "{reason}"),
        Err(e) => panic!("expected an I2C error, got {e}"),
        Ok(_) => panic!("expected an I2C error, got a meter"),
    }
    bus.done();
}

#[test]
fn bad_calibration_is_a_config_error() {
    let mut bus = I2cMock::new(&[]);
    for config in [
        Ina219Config {
            address: 0x20,
            ..Ina219Config::default()
        },
        Ina219Config {
            current_lsb_micro_amp: 1,
            shunt_micro_ohm: 1,
            ..Ina219Config::default()
        },
        Ina219Config {
            power_scale: -1.0,
            ..Ina219Config::default()
        },
    ] {
        assert!(matches!(
            Ina219Meter::open(bus.clone(), &config, Arc::new(ManualClock::new())),
            Err(HwError::Config(_))
        ));
    }
    bus.done();
}
