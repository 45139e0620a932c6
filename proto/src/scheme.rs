//! The payment schemes by name (design.md "Payment schemes"): parsed and printed here, once,
//! for configs, CLIs, stores, reports and the demo.

use std::fmt;
use std::str::FromStr;

use crate::v1;

/// A payment scheme. Its name (in configs, CLIs, stores and reports) is the kebab-case of the
/// variant: `onchain`, `single-fee`, `spillman`, `lightning`; on the wire it is
/// [`v1::Scheme`].
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Scheme {
    /// One transaction per quota (paper seed 000 §V).
    Onchain,
    /// Rising payments over the same inputs, one broadcast per input set (paper §VI).
    SingleFee,
    /// A 2-of-2 deposit with a pre-signed timelocked refund, rising payments (seed 003).
    Spillman,
    /// BOLT11 invoices or keysends over Lightning channels (BOLT 11, via ldk-node).
    Lightning,
}

impl Scheme {
    /// Every scheme, in the order of the wire enum.
    pub const ALL: [Scheme; 4] = [
        Scheme::Onchain,
        Scheme::SingleFee,
        Scheme::Spillman,
        Scheme::Lightning,
    ];

    /// The scheme's name: `onchain`, `single-fee`, `spillman`, `lightning`.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Onchain => "onchain",
            Scheme::SingleFee => "single-fee",
            Scheme::Spillman => "spillman",
            Scheme::Lightning => "lightning",
        }
    }

    /// The scheme on the wire.
    pub fn to_proto(self) -> v1::Scheme {
        match self {
            Scheme::Onchain => v1::Scheme::Onchain,
            Scheme::SingleFee => v1::Scheme::SingleFee,
            Scheme::Spillman => v1::Scheme::Spillman,
            Scheme::Lightning => v1::Scheme::Lightning,
        }
    }

    /// The scheme of a wire value; `None` for `SCHEME_UNSPECIFIED` and unknown values.
    pub fn from_proto(value: i32) -> Option<Self> {
        Scheme::ALL
            .into_iter()
            .find(|s| s.to_proto() as i32 == value)
    }
}

impl From<Scheme> for v1::Scheme {
    fn from(scheme: Scheme) -> Self {
        scheme.to_proto()
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is no scheme.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scheme {0:?}: expected onchain, single-fee, spillman or lightning")]
pub struct UnknownScheme(pub String);

impl FromStr for Scheme {
    type Err = UnknownScheme;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Scheme::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| UnknownScheme(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_text_serde_and_the_wire() {
        for scheme in Scheme::ALL {
            assert_eq!(scheme.name().parse::<Scheme>(), Ok(scheme));
            assert_eq!(scheme.to_string(), scheme.name());
            let json = format!("\"{}\"", scheme.name());
            assert_eq!(serde_json::from_str::<Scheme>(&json).unwrap(), scheme);
            assert_eq!(Scheme::from_proto(scheme.to_proto() as i32), Some(scheme));
        }
        assert_eq!(Scheme::from_proto(0), None);
        let error = "single_fee".parse::<Scheme>().unwrap_err().to_string();
        assert!(error.contains("single-fee"), "{error}");
    }
}
