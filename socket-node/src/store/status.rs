//! The status columns of the store as Rust enums, stored as their lowercase names (the values
//! the schema's `CHECK` constraints allow), so that no status is a bare string in the code.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

/// A status column: each variant and the text stored for it.
macro_rules! status_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            /// The text stored in the column.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }

        impl FromSql for $name {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                match value.as_str()? {
                    $($text => Ok($name::$variant),)+
                    other => Err(FromSqlError::Other(
                        format!(concat!("unknown ", stringify!($name), " {:?}"), other).into(),
                    )),
                }
            }
        }
    };
}

status_enum! {
    /// Status of an on-chain payment (`payments.status`).
    PaymentStatus {
        /// `onchain`: persisted, not yet broadcast (a restart broadcasts it).
        Accepted = "accepted",
        /// Broadcast (bitcoind took it).
        Broadcast = "broadcast",
        /// Refused by bitcoind when broadcast: never credited.
        Failed = "failed",
        /// `single-fee` / `spillman`: held by the socket, broadcast when its set or channel
        /// closes.
        Held = "held",
        /// `onchain`: `final_confirmations` deep; no longer watched.
        Confirmed = "confirmed",
        /// `onchain`: a conflicting transaction spent one of its inputs after it was credited
        /// (the cable replaced it): the money is gone.
        Lost = "lost",
    }
}

status_enum! {
    /// Status of a single-fee input set (`single_fee_sets.status`).
    SetStatus {
        /// Taking payments.
        Open = "open",
        /// Closed, its latest transaction sent (or sent again by the chain watch until
        /// bitcoind takes it) and watched until final.
        Broadcast = "broadcast",
        /// Its latest transaction was replaced by a named transaction of the cable (an input
        /// spent elsewhere): the value is lost, the cable banned.
        Failed = "failed",
        /// Closed with nothing paid.
        Empty = "empty",
    }
}

status_enum! {
    /// Status of a spillman channel (`spillman_channels.status`).
    ChannelStatus {
        /// The refund is signed; waiting for the deposit.
        RefundSigned = "refund-signed",
        /// Open: the deposit was handed over.
        Funded = "funded",
        /// The highest payment was broadcast.
        Closed = "closed",
        /// Ended with no payment (the cable takes its refund).
        Unpaid = "unpaid",
        /// The deposit was spent elsewhere (a double spend before it confirmed).
        Lost = "lost",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_reads_back_as_written_and_an_unknown_one_is_an_error() {
        let db = rusqlite::Connection::open_in_memory().unwrap();
        db.execute("CREATE TABLE t (s TEXT)", []).unwrap();
        for status in [ChannelStatus::RefundSigned, ChannelStatus::Lost] {
            db.execute("DELETE FROM t", []).unwrap();
            db.execute("INSERT INTO t VALUES (?1)", [status]).unwrap();
            let text: String = db.query_row("SELECT s FROM t", [], |r| r.get(0)).unwrap();
            assert_eq!(text, status.as_str());
            let back: ChannelStatus = db.query_row("SELECT s FROM t", [], |r| r.get(0)).unwrap();
            assert_eq!(back, status);
        }
        db.execute("UPDATE t SET s = 'melted'", []).unwrap();
        assert!(db
            .query_row("SELECT s FROM t", [], |r| r.get::<_, ChannelStatus>(0))
            .is_err());
    }
}
