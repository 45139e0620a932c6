//! Every outlet's live view, taken once a second and handed to the dashboard's event stream,
//! and its power and session energy over the last hour, for the plot.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use crate::outlet::OutletView;
use crate::station::Station;

/// How often the outlets are looked at.
pub const VIEW_EVERY: Duration = Duration::from_secs(1);
/// One history sample every this many ticks of [`VIEW_EVERY`].
const SAMPLE_EVERY_TICKS: u32 = 10;
/// Samples kept per outlet: one hour.
const SAMPLES_KEPT: usize = 360;

/// One point of an outlet's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Sample {
    /// When, Unix ms.
    pub time_unix_ms: i64,
    /// Power, mW.
    pub power_mw: u64,
    /// Energy of the session in progress, mWh (0 without one).
    pub energy_used_mwh: u64,
}

/// The live views and the history, fed by [`Live::run`].
pub struct Live {
    views: watch::Sender<Vec<OutletView>>,
    history: Mutex<BTreeMap<String, VecDeque<Sample>>>,
}

impl Live {
    /// Nothing seen yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Live {
            views: watch::channel(Vec::new()).0,
            history: Mutex::default(),
        })
    }

    /// Follow the views as they are taken (the latest first).
    pub fn subscribe(&self) -> watch::Receiver<Vec<OutletView>> {
        self.views.subscribe()
    }

    /// Each outlet's samples of the last hour, oldest first.
    pub fn history(&self) -> BTreeMap<String, Vec<Sample>> {
        crate::shared::lock(&self.history)
            .iter()
            .map(|(id, samples)| (id.clone(), samples.iter().copied().collect()))
            .collect()
    }

    /// Look at every outlet each [`VIEW_EVERY`] while the event stream has followers, and each
    /// [`SAMPLE_EVERY_TICKS`] for the history, until the station's outlets stop.
    pub async fn run(self: Arc<Self>, station: Arc<Station>) {
        let mut interval = tokio::time::interval(VIEW_EVERY);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut ticks = 0u32;
        loop {
            interval.tick().await;
            let sample = ticks.is_multiple_of(SAMPLE_EVERY_TICKS);
            ticks = ticks.wrapping_add(1);
            // Nobody follows the stream: only the history's samples are taken (a socket of
            // many outlets is not asked about each of them every second for nothing).
            if !sample && self.views.receiver_count() == 0 {
                continue;
            }
            let mut views = Vec::with_capacity(station.outlets.len());
            for outlet in station.outlets.iter() {
                match outlet.view().await {
                    Ok(view) => views.push(view),
                    Err(_) => return,
                }
            }
            if sample {
                let mut history = crate::shared::lock(&self.history);
                for view in &views {
                    let samples = history.entry(view.outlet_id.clone()).or_default();
                    if samples.len() == SAMPLES_KEPT {
                        samples.pop_front();
                    }
                    samples.push_back(Sample {
                        time_unix_ms: view.time_unix_ms,
                        power_mw: view.power_mw,
                        energy_used_mwh: view.energy_used_mwh,
                    });
                }
            }
            self.views.send_replace(views);
        }
    }
}
