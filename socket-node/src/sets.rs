//! The single-fee input set in progress on each outlet (paper seed 000 §VI), owned by the
//! `single-fee` scheme and kept here, below the outlets and sellers that use it.
//!
//! One [`Mutex`] per outlet: a payment is held into a set, and a set is closed (full, aged,
//! its session ended, its inputs spent), each under that outlet's lock, so that no payment is
//! ever held into a set already closed. Lock order: a set's lock before the store's, never the
//! other way round.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use proto::single_fee::SellerSet;

/// The single-fee input set a session is paying into (paper §VI).
#[derive(Debug, Clone)]
pub(crate) struct OpenSet {
    /// Session id.
    pub(crate) session_id: String,
    /// Index of the set within the session, from 1.
    pub(crate) index: u32,
    /// What the socket holds.
    pub(crate) seller: SellerSet,
    /// The set's fee, once its first payment is held.
    pub(crate) fee: Option<bitcoin::Amount>,
    /// When it was opened, Unix ms.
    pub(crate) opened_at_unix_ms: i64,
}

impl OpenSet {
    /// Whether this is set `index` of `session_id`.
    pub(crate) fn is(&self, session_id: &str, index: u32) -> bool {
        self.session_id == session_id && self.index == index
    }
}

/// The set in progress of every outlet, by outlet id.
pub(crate) struct Sets(BTreeMap<String, Mutex<Option<OpenSet>>>);

impl Sets {
    /// No set open on any of `outlet_ids`.
    pub(crate) fn new<'a>(outlet_ids: impl IntoIterator<Item = &'a str>) -> Self {
        Sets(
            outlet_ids
                .into_iter()
                .map(|id| (id.to_owned(), Mutex::new(None)))
                .collect(),
        )
    }

    /// The set in progress on `outlet_id`, locked (take it before the store's lock, never
    /// after). `None` for an outlet the socket does not have.
    pub(crate) fn of(&self, outlet_id: &str) -> Option<MutexGuard<'_, Option<OpenSet>>> {
        self.0
            .get(outlet_id)
            .map(|set| set.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// Take the set of `outlet_id` (closing it) if `close` says so.
    pub(crate) fn take_if(
        &self,
        outlet_id: &str,
        close: impl FnOnce(&mut OpenSet) -> bool,
    ) -> Option<OpenSet> {
        self.of(outlet_id)?.take_if(close)
    }

    /// A copy of the set in progress on `outlet_id`.
    pub(crate) fn snapshot(&self, outlet_id: &str) -> Option<OpenSet> {
        self.of(outlet_id)?.clone()
    }
}
