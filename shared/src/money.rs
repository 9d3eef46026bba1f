//! Money as integer micro-USD, parsed from and printed as exact decimal strings (never through floats).

use std::fmt;
use std::str::FromStr;

/// An amount in millionths of a US dollar.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
pub struct MicroUsd(pub u64);

impl MicroUsd {
    pub const ZERO: MicroUsd = MicroUsd(0);

    /// Whole dollars.
    pub const fn dollars(n: u64) -> MicroUsd {
        MicroUsd(n * 1_000_000)
    }

    /// Cents.
    pub const fn cents(n: u64) -> MicroUsd {
        MicroUsd(n * 10_000)
    }
}

/// Why a price string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an amount in USD like \"0.40\" (digits, at most 6 decimals)")]
pub struct MoneyError(pub String);

impl FromStr for MicroUsd {
    type Err = MoneyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || MoneyError(s.to_owned());
        let digits = s.trim().strip_prefix('$').unwrap_or(s.trim());
        let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
        let all_digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || !all_digits(whole) || !all_digits(frac) || frac.len() > 6 {
            return Err(bad());
        }
        if digits.ends_with('.') {
            return Err(bad());
        }
        let whole: u64 = whole.parse().map_err(|_| bad())?;
        let frac: u64 = format!("{frac:0<6}").parse().map_err(|_| bad())?;
        whole
            .checked_mul(1_000_000)
            .and_then(|w| w.checked_add(frac))
            .map(MicroUsd)
            .ok_or_else(bad)
    }
}

impl fmt::Display for MicroUsd {
    /// `$0.40`, `$23.50`, `$0.000125`: at least two decimals, more only when needed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / 1_000_000;
        let frac = format!("{:06}", self.0 % 1_000_000);
        let frac = frac.trim_end_matches('0');
        write!(f, "${whole}.{frac:0<2}")
    }
}

impl serde::Serialize for MicroUsd {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.to_string().trim_start_matches('$'))
    }
}

impl<'de> serde::Deserialize<'de> for MicroUsd {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = MicroUsd;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a USD amount as a string, like \"0.40\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<MicroUsd, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<MicroUsd, E> {
                v.checked_mul(1_000_000)
                    .map(MicroUsd)
                    .ok_or_else(|| E::custom("amount too large"))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<MicroUsd, E> {
                u64::try_from(v).map_err(|_| E::custom("amount cannot be negative"))?;
                self.visit_u64(v.unsigned_abs())
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<MicroUsd, E> {
                Err(E::custom(format!(
                    "write the amount as a string, like \"{v}\", so that it stays exact"
                )))
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_exact_amounts() {
        assert_eq!("0.40".parse(), Ok(MicroUsd(400_000)));
        assert_eq!("23.50".parse(), Ok(MicroUsd(23_500_000)));
        assert_eq!("$1".parse(), Ok(MicroUsd::dollars(1)));
        assert_eq!("0.000001".parse(), Ok(MicroUsd(1)));
        for bad in [
            "",
            ".5",
            "1.",
            "-1",
            "1e3",
            "0.0000001",
            "1,5",
            "abc",
            "99999999999999999999",
        ] {
            assert!(bad.parse::<MicroUsd>().is_err(), "{bad}");
        }
    }

    #[test]
    fn prints_dollars() {
        assert_eq!(MicroUsd(400_000).to_string(), "$0.40");
        assert_eq!(MicroUsd::dollars(20).to_string(), "$20.00");
        assert_eq!(MicroUsd(125).to_string(), "$0.000125");
        assert_eq!(MicroUsd::cents(3).to_string(), "$0.03");
    }

    #[test]
    fn toml_floats_are_refused_with_a_hint() {
        #[derive(serde::Deserialize, Debug)]
        struct P {
            #[allow(dead_code)]
            price: MicroUsd,
        }
        let err = toml::from_str::<P>("price = 0.4").unwrap_err().to_string();
        assert!(err.contains("as a string"), "{err}");
        assert_eq!(
            toml::from_str::<P>("price = \"0.40\"").unwrap().price,
            MicroUsd(400_000)
        );
        assert_eq!(
            toml::from_str::<P>("price = 5").unwrap().price,
            MicroUsd::dollars(5)
        );
    }

    proptest! {
        #[test]
        fn display_round_trips(n in 0u64..u64::MAX / 2) {
            let shown = MicroUsd(n).to_string();
            prop_assert_eq!(shown.parse::<MicroUsd>(), Ok(MicroUsd(n)));
        }
    }
}
