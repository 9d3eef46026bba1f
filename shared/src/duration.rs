//! Human durations as the Space config writes them: `30m`, `1h`, `1h30m`, `90s`, `2d`.

use std::time::Duration;

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not a duration like `30m`, `1h` or `1h30m`: {reason}")]
pub struct DurationError {
    pub input: String,
    pub reason: &'static str,
}

/// Parses a sequence of `<number><unit>` parts with units `d`, `h`, `m`, `s`, each unit at most once and in
/// that order.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let err = |reason| DurationError {
        input: input.to_owned(),
        reason,
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(err("it is empty"));
    }
    let units = [('d', 86_400u64), ('h', 3_600), ('m', 60), ('s', 1)];
    let mut next_unit = 0;
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let n_digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if n_digits == 0 {
            return Err(err("each part must start with a number"));
        }
        if n_digits > 9 {
            return Err(err("a number is too large"));
        }
        let (digits, after) = rest.split_at(n_digits);
        let unit = after
            .chars()
            .next()
            .ok_or_else(|| err("a unit (d, h, m or s) is missing"))?;
        let idx = units[next_unit..]
            .iter()
            .position(|(u, _)| *u == unit)
            .ok_or_else(|| err("units must be d, h, m or s, each once, largest first"))?;
        let value: u64 = digits.parse().map_err(|_| err("a number is too large"))?;
        total = total.saturating_add(value.saturating_mul(units[next_unit + idx].1));
        next_unit += idx + 1;
        rest = &after[unit.len_utf8()..];
    }
    Ok(Duration::from_secs(total))
}

/// Formats seconds the way `parse` reads them (`1h30m`).
pub fn format(d: Duration) -> String {
    let mut secs = d.as_secs();
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(parse("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("2d12h"), Ok(Duration::from_secs(216_000)));
        assert_eq!(parse("45s"), Ok(Duration::from_secs(45)));
    }

    #[test]
    fn refuses_the_rest() {
        for (input, reason) in [
            ("", "empty"),
            ("30", "unit"),
            ("m", "start with a number"),
            ("1x", "units must be"),
            ("30m1h", "largest first"),
            ("1h1h", "each once"),
            ("1.5h", "units must be"),
            ("9999999999s", "too large"),
            ("-5m", "start with a number"),
        ] {
            let e = parse(input).unwrap_err();
            assert!(e.reason.contains(reason), "{input}: {e}");
        }
    }

    proptest! {
        #[test]
        fn format_round_trips(secs in 0u64..10_000_000) {
            prop_assert_eq!(parse(&format(Duration::from_secs(secs))), Ok(Duration::from_secs(secs)));
        }

        #[test]
        fn never_panics(s in "\\PC{0,20}") {
            let _ = parse(&s);
        }
    }
}
