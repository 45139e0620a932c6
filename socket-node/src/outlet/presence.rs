//! Who is at an outlet (design.md "Blame needs proof"; socket.proto `WatchStatus`): presence is
//! the cable's, not the link's. Every open `WatchStatus` stream is a watcher; one opened with a
//! cable's signature (`WatchStatusRequest.auth`) is also that cable's presence. A session in
//! progress stays alive only while its own cable is present: a stranger's stream, or another
//! cable's, keeps nobody's session and relay on.
//!
//! Replays: each cable key's streams must come with ever higher sequences at this outlet (since
//! the socket started); a request played again is refused, and only the stream of a key's
//! newest sequence counts as its presence, so a cable that opens a new stream always takes its
//! presence back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::SocketError;

/// Keys whose streams all closed are forgotten past this many keys (their newest sequence with
/// them), so that strangers minting keys cannot grow the map without bound.
const MAX_IDLE_KEYS: usize = 1_024;

/// The watchers of one outlet and the cables present among them.
#[derive(Default)]
pub(crate) struct Presence(Mutex<Inner>);

#[derive(Default)]
struct Inner {
    /// Open streams, signed or not.
    watchers: usize,
    /// Per cable identity key (hex): the newest sequence accepted, and whether its stream is
    /// open.
    keys: HashMap<String, (u64, bool)>,
}

/// An open stream: a watcher while it lives, and its cable's presence when signed.
pub(crate) struct PresenceGuard {
    presence: Arc<Presence>,
    cable: Option<(String, u64)>,
}

impl Presence {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A stream opens: anonymous (`cable` none), or signed by the cable key (hex) with its
    /// sequence. Errors: `UNAUTHENTICATED` for a sequence not above the last one accepted on a
    /// stream of that key (a replay).
    pub(crate) fn watch(
        self: &Arc<Self>,
        cable: Option<(String, u64)>,
    ) -> Result<PresenceGuard, SocketError> {
        let mut inner = self.inner();
        if let Some((key, sequence)) = &cable {
            if let Some((newest, _)) = inner.keys.get(key) {
                if sequence <= newest {
                    return Err(SocketError::Unauthenticated(format!(
                        "a WatchStatus of sequence {sequence}, not above the last one of this \
                         cable ({newest}): replayed"
                    )));
                }
            }
            if inner.keys.len() >= MAX_IDLE_KEYS {
                inner.keys.retain(|_, (_, open)| *open);
            }
            inner.keys.insert(key.clone(), (*sequence, true));
        }
        inner.watchers += 1;
        Ok(PresenceGuard {
            presence: Arc::clone(self),
            cable,
        })
    }

    /// Open streams, signed or not.
    pub(crate) fn watchers(&self) -> usize {
        self.inner().watchers
    }

    /// Whether the cable `key` (hex) has the stream of its newest sequence open.
    pub(crate) fn present(&self, key: &str) -> bool {
        self.inner().keys.get(key).is_some_and(|(_, open)| *open)
    }
}

impl Drop for PresenceGuard {
    fn drop(&mut self) {
        let mut inner = self.presence.inner();
        inner.watchers = inner.watchers.saturating_sub(1);
        if let Some((key, sequence)) = &self.cable {
            if let Some((newest, open)) = inner.keys.get_mut(key) {
                if newest == sequence {
                    *open = false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_newest_signed_stream_of_a_cable_is_its_presence_and_replays_are_refused() {
        let presence = Arc::new(Presence::default());
        let stranger = presence.watch(None).unwrap();
        assert_eq!(presence.watchers(), 1);
        assert!(!presence.present("k"));

        let first = presence.watch(Some(("k".into(), 5))).unwrap();
        assert!(presence.present("k"));
        assert!(presence.watch(Some(("k".into(), 5))).is_err(), "a replay");
        assert!(
            presence.watch(Some(("k".into(), 4))).is_err(),
            "an older one"
        );

        // The cable comes back on a new stream: the old one closing does not take it away.
        let second = presence.watch(Some(("k".into(), 6))).unwrap();
        drop(first);
        assert!(presence.present("k"));
        drop(second);
        assert!(!presence.present("k"));
        // A stranger's stream stays, and is no presence of the cable.
        assert_eq!(presence.watchers(), 1);
        assert!(
            presence.watch(Some(("k".into(), 6))).is_err(),
            "replayed after"
        );
        drop(stranger);
        assert_eq!(presence.watchers(), 0);
    }
}
