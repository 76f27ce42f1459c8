//! Owns the user-facing value syntaxes: durations, percentages, byte sizes and baseline-relative thresholds.
//!
//! Each type parses from the string a user writes in TOML, so a bad value is reported by the TOML
//! parser with the file, line and column of the value itself.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A duration in humantime syntax (`250ms`, `5s`, `1m 30s`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Dur(pub(crate) Duration);

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        // humantime's own message points at byte offsets, which read as noise in a TOML error.
        humantime::parse_duration(s.trim())
            .map(Dur)
            .map_err(|_| format!("invalid duration `{s}`: write e.g. `250ms`, `5s` or `1m 30s`"))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// A share written as a percentage string (`"99%"`, `"99.9%"`), held as a fraction in `0.0..=1.0`.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub(crate) struct Percent(pub(crate) f64);

impl FromStr for Percent {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid percentage `{s}`: write a number from 0 to 100 followed by `%`, e.g. `99.9%`"
            )
        };
        let number = s.trim().strip_suffix('%').ok_or_else(bad)?;
        let value: f64 = number.trim().parse().map_err(|_| bad())?;
        if !(0.0..=100.0).contains(&value) {
            return Err(bad());
        }
        Ok(Percent(value / 100.0))
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", format_number(self.0 * 100.0))
    }
}

/// Splits `"512MiB"` into `(512, "MiB")`: a whole number, then a unit (spaces allowed between).
pub(crate) fn number_and_unit(s: &str) -> Option<(u64, &str)> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    Some((digits.parse().ok()?, unit.trim()))
}

/// A byte count written with a unit (`512MiB`, `1GiB`, `100MB`, `4096`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ByteSize(pub(crate) u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid size `{s}`: write a whole number with a unit, e.g. `512MiB`, `1GiB` or `100MB`"
            )
        };
        let (n, unit) = number_and_unit(s).ok_or_else(bad)?;
        let multiplier: u64 = match unit {
            "" | "B" => 1,
            "KB" | "kB" => 1000,
            "MB" => 1000_u64.pow(2),
            "GB" => 1000_u64.pow(3),
            "TB" => 1000_u64.pow(4),
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            _ => return Err(bad()),
        };
        n.checked_mul(multiplier).map(ByteSize).ok_or_else(bad)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_bytes(self.0))
    }
}

/// Formats a byte count with the largest binary unit that keeps it at least 1.
pub(crate) fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Prints a number with at most two decimals and no trailing zeros.
pub(crate) fn format_number(value: f64) -> String {
    let s = format!("{value:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// A latency bound: a fixed duration, or a multiple of the latency measured in the `before` phase.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum LatencyBound {
    Absolute(Duration),
    /// `"2x baseline"`: the bound is this factor times the same percentile measured before the method.
    TimesBaseline(f64),
}

impl FromStr for LatencyBound {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if let Some(factor) = t.strip_suffix("baseline") {
            let factor = factor.trim().strip_suffix('x').map(str::trim);
            return match factor.and_then(|f| f.parse::<f64>().ok()) {
                Some(f) if f > 0.0 && f.is_finite() => Ok(LatencyBound::TimesBaseline(f)),
                _ => Err(format!(
                    "invalid latency bound `{s}`: write a duration (`250ms`) or a factor of the baseline (`2x baseline`)"
                )),
            };
        }
        t.parse::<Dur>().map(|d| LatencyBound::Absolute(d.0)).map_err(|_| {
            format!("invalid latency bound `{s}`: write a duration (`250ms`) or a factor of the baseline (`2x baseline`)")
        })
    }
}

impl fmt::Display for LatencyBound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LatencyBound::Absolute(d) => write!(f, "{}", format_ms(*d)),
            LatencyBound::TimesBaseline(x) => write!(f, "{}x baseline", format_number(*x)),
        }
    }
}

/// A success-ratio bound: a fixed share, or the baseline's share minus some points.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum SuccessBound {
    Absolute(f64),
    /// `"baseline - 1%"`: the bound is the ratio measured before the method, less this fraction.
    BaselineMinus(f64),
}

impl FromStr for SuccessBound {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if let Some(rest) = t.strip_prefix("baseline") {
            let rest = rest.trim();
            if rest.is_empty() {
                return Ok(SuccessBound::BaselineMinus(0.0));
            }
            if let Some(points) = rest.strip_prefix('-') {
                return points
                    .parse::<Percent>()
                    .map(|p| SuccessBound::BaselineMinus(p.0));
            }
            return Err(format!(
                "invalid success bound `{s}`: write a percentage (`99%`) or `baseline - 1%`"
            ));
        }
        t.parse::<Percent>().map(|p| SuccessBound::Absolute(p.0))
    }
}

impl fmt::Display for SuccessBound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SuccessBound::Absolute(p) => write!(f, "{}", Percent(*p)),
            SuccessBound::BaselineMinus(p) => write!(f, "baseline - {}", Percent(*p)),
        }
    }
}

/// Formats a duration in milliseconds for people: `812 ms`, `1.25 ms`, `4.1 s`.
pub(crate) fn format_ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms >= 1000.0 {
        format!("{} s", format_number(ms / 1000.0))
    } else if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{} ms", format_number(ms))
    }
}

/// Serde for a type through its `FromStr` and `Display`, so a bad value is reported by the TOML
/// parser at the value's own line and column. Shared with `fault/net.rs`.
macro_rules! serde_via_str {
    ($($ty:ty),*) => {$(
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = <String as serde::Deserialize>::deserialize(deserializer)?;
                s.parse().map_err(<D::Error as serde::de::Error>::custom)
            }
        }
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }
    )*};
}
pub(crate) use serde_via_str;

serde_via_str!(Dur, Percent, ByteSize, LatencyBound, SuccessBound);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_humantime_and_reject_bare_numbers() {
        assert_eq!("1m 30s".parse::<Dur>().unwrap().0, Duration::from_secs(90));
        assert_eq!(
            "250ms".parse::<Dur>().unwrap().0,
            Duration::from_millis(250)
        );
        let err = "5".parse::<Dur>().unwrap_err();
        assert!(err.contains("invalid duration `5`"), "{err}");
    }

    #[test]
    fn percentages_need_the_sign_and_stay_in_range() {
        assert!(("99.9%".parse::<Percent>().unwrap().0 - 0.999).abs() < 1e-12);
        assert!("99.9".parse::<Percent>().is_err());
        assert!("101%".parse::<Percent>().is_err());
        assert_eq!(Percent(0.999).to_string(), "99.9%");
    }

    #[test]
    fn sizes_know_binary_and_decimal_units() {
        assert_eq!("1GiB".parse::<ByteSize>().unwrap().0, 1 << 30);
        assert_eq!("100MB".parse::<ByteSize>().unwrap().0, 100_000_000);
        assert_eq!("4096".parse::<ByteSize>().unwrap().0, 4096);
        assert!("1.5GiB".parse::<ByteSize>().is_err());
        assert!("12 parsecs".parse::<ByteSize>().is_err());
        assert!("99999999999TiB".parse::<ByteSize>().is_err());
    }

    #[test]
    fn bounds_can_be_relative_to_the_baseline() {
        assert_eq!(
            "2x baseline".parse::<LatencyBound>().unwrap(),
            LatencyBound::TimesBaseline(2.0)
        );
        assert_eq!(
            "250ms".parse::<LatencyBound>().unwrap(),
            LatencyBound::Absolute(Duration::from_millis(250))
        );
        assert!("0x baseline".parse::<LatencyBound>().is_err());
        assert_eq!(
            "baseline - 1%".parse::<SuccessBound>().unwrap(),
            SuccessBound::BaselineMinus(0.01)
        );
        assert_eq!(
            "99%".parse::<SuccessBound>().unwrap(),
            SuccessBound::Absolute(0.99)
        );
    }

    #[test]
    fn milliseconds_read_well() {
        assert_eq!(format_ms(Duration::from_micros(1250)), "1.25 ms");
        assert_eq!(format_ms(Duration::from_millis(812)), "812 ms");
        assert_eq!(format_ms(Duration::from_millis(12_500)), "12.5 s");
        assert_eq!(format_ms(Duration::from_millis(4_100)), "4.1 s");
        assert_eq!(format_bytes(3 << 29), "1.5 GiB");
    }
}
