//! Properties of the outlet state machine over commands in any order (as rust-lightning's
//! `chanmon_consistency` does for channels): whatever a cable, the socket's checks and the
//! meter do, and in whatever order, the machine credits exactly what was paid, closes the relay
//! only while Paid and plugged in, ends each session once, and locks a cable out on its own
//! only when no payment of it is waiting on the socket (design.md "Blame needs proof").

use proptest::prelude::*;
use proto::units::EnergyMwh;
use proto::v1::OutletState;

use super::machine::{Event, Outlet, OutletParams};

/// One thing that happens to an outlet.
#[derive(Debug, Clone)]
enum Command {
    /// Time passes (ms), the meter counts (mWh), the plug sensor reads.
    Tick { ms: u64, mwh: u64, plugged: bool },
    /// A cable's first `PowerRequest` (the next session id).
    Open,
    /// A payment credited to the session in progress, or to another one.
    Credit { quota_mwh: u64, other: bool },
    /// A payment offered, now being checked.
    Offer,
    /// The payment offered was judged and not credited.
    NotCredited,
    /// A payment found bad.
    LockOut,
    /// The cable ends its session.
    End { other: bool },
    /// A session that could not open is abandoned.
    Abandon,
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        4 => (0..20_000u64, 0..6_000u64, prop::bool::weighted(0.9))
            .prop_map(|(ms, mwh, plugged)| Command::Tick { ms, mwh, plugged }),
        2 => Just(Command::Open),
        3 => (1..10_000u64, prop::bool::weighted(0.1))
            .prop_map(|(quota_mwh, other)| Command::Credit { quota_mwh, other }),
        2 => Just(Command::Offer),
        1 => Just(Command::NotCredited),
        1 => Just(Command::LockOut),
        1 => prop::bool::weighted(0.2).prop_map(|other| Command::End { other }),
        1 => Just(Command::Abandon),
    ]
}

/// What the test knows of the session in progress, kept beside the machine.
#[derive(Debug, Default)]
struct Model {
    /// Sum of the quotas credited (accepted by the machine).
    credited_mwh: u64,
    /// Credits accepted.
    payments: u64,
    /// Meter energy since the session opened.
    metered_mwh: u64,
    /// A payment offered and not judged yet.
    offered: bool,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_machine_credits_what_was_paid_and_blames_only_without_a_payment_waiting(
        commands in prop::collection::vec(command(), 1..80)
    ) {
        let mut outlet = Outlet::new(OutletParams {
            quota_low: EnergyMwh(1_000),
            grace_ms: 5_000,
            lockout_ms: 30_000,
            payment_timeout_ms: 10_000,
        });
        let (mut now_ms, mut meter_mwh, mut plugged) = (0u64, 0u64, true);
        let mut next_id = 0u32;
        let mut model: Option<(String, Model)> = None;
        let mut ended = std::collections::BTreeSet::new();
        outlet.tick(now_ms, EnergyMwh(meter_mwh), plugged);
        for command in commands {
            let in_progress = outlet.session().map(|s| s.id.clone());
            let other = format!("other-{next_id}");
            let events = match &command {
                Command::Tick { ms, mwh, plugged: p } => {
                    now_ms += ms;
                    meter_mwh += mwh;
                    plugged = *p;
                    if let Some((_, m)) = &mut model {
                        m.metered_mwh += mwh;
                    }
                    outlet.tick(now_ms, EnergyMwh(meter_mwh), plugged)
                }
                Command::Open => {
                    next_id += 1;
                    let id = format!("s{next_id}");
                    match outlet.open_session(id.clone(), now_ms, EnergyMwh(meter_mwh)) {
                        Ok(()) => {
                            prop_assert!(in_progress.is_none(), "a second session opened");
                            model = Some((id, Model::default()));
                        }
                        Err(_) => prop_assert_eq!(outlet.session().map(|s| s.id.clone()), in_progress.clone()),
                    }
                    Vec::new()
                }
                Command::Credit { quota_mwh, other: to_other } => {
                    let id = match (&in_progress, to_other) {
                        (Some(id), false) => id.clone(),
                        _ => other.clone(),
                    };
                    match outlet.credit(&id, EnergyMwh(*quota_mwh)) {
                        Ok(events) => {
                            let (session, m) = model.as_mut().expect("credited without a session");
                            prop_assert_eq!(&*session, &id, "credited to a session not in progress");
                            m.credited_mwh += quota_mwh;
                            m.payments += 1;
                            m.offered = false;
                            prop_assert_eq!(outlet.state(), OutletState::Paid);
                            events
                        }
                        Err(_) => Vec::new(),
                    }
                }
                Command::Offer => {
                    if let Some(id) = &in_progress {
                        outlet.payment_offered(id);
                        if outlet.state() != OutletState::Lockout {
                            model.as_mut().expect("a session").1.offered = true;
                        }
                    }
                    Vec::new()
                }
                Command::NotCredited => {
                    if let Some(id) = &in_progress {
                        outlet.payment_not_credited(id);
                        model.as_mut().expect("a session").1.offered = false;
                    }
                    Vec::new()
                }
                Command::LockOut => outlet.lock_out("a bad payment", now_ms),
                Command::End { other: to_other } => {
                    let id = match (&in_progress, to_other) {
                        (Some(id), false) => id.clone(),
                        _ => other.clone(),
                    };
                    outlet.end_session(&id, "unplugged by the cable").unwrap_or_default()
                }
                Command::Abandon => match &in_progress {
                    Some(id) => outlet.abandon(id, "could not open"),
                    None => Vec::new(),
                },
            };

            // Each session ends once, and only the one in progress.
            for event in &events {
                if let Event::SessionEnded { id, used, .. } = event {
                    prop_assert_eq!(Some(id), in_progress.as_ref());
                    prop_assert!(ended.insert(id.clone()), "{} ended twice", id);
                    let (_, m) = model.take().expect("ended a session the model had");
                    prop_assert_eq!(used.0, m.metered_mwh, "energy of the ended session");
                    // Locked out by the machine itself: never while a payment waits.
                    let automatic = matches!(command, Command::Tick { .. });
                    if automatic && outlet.state() == OutletState::Lockout {
                        prop_assert!(!m.offered, "locked out while its payment was being checked");
                    }
                }
            }
            // The state watchers are told is the state.
            if let Some(Event::StateChanged(state)) = events
                .iter()
                .rev()
                .find(|e| matches!(e, Event::StateChanged(_)))
            {
                prop_assert_eq!(*state, outlet.state());
            }
            // Credit is exactly what was paid, energy exactly what the meter counted.
            match (outlet.session(), &model) {
                (Some(session), Some((id, m))) => {
                    prop_assert_eq!(&session.id, id);
                    prop_assert_eq!(session.credited.0, m.credited_mwh);
                    prop_assert_eq!(session.payments, m.payments);
                    prop_assert_eq!(session.used.0, m.metered_mwh);
                }
                (None, None) => {}
                (session, model) => prop_assert!(false, "session {:?}, model {:?}", session, model),
            }
            // The relay closes only while Paid and plugged in; Paid has a paid session;
            // a lockout has none.
            prop_assert_eq!(outlet.relay_closed(), outlet.state() == OutletState::Paid && plugged);
            if outlet.state() == OutletState::Paid {
                prop_assert!(outlet.session().is_some_and(|s| s.payments > 0));
            }
            if outlet.state() == OutletState::Lockout {
                prop_assert!(outlet.session().is_none());
            }
        }
    }
}
