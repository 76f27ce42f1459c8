//! Owns the weekly window syntax of `only_within` and `[[blackout]] weekly`: parsing the text users
//! write and deciding whether a civil (wall-clock) time falls inside. Pure.
//!
//! Grammar (case-insensitive day names `Mon` … `Sun`):
//! - `[DAYS] HH:MM-HH:MM`: on each listed day, from the first time (inclusive) to the second
//!   (exclusive). DAYS is a comma-separated list of days and ranges (`Mon-Fri`, `Sat,Sun`,
//!   `Fri-Mon` wraps over the weekend); without DAYS the window is every day. An end at or before
//!   the start crosses midnight into the next day (`Fri 22:00-02:00` is Friday 22:00 to Saturday
//!   02:00: the days name the day the window starts); an end equal to the start is 24 hours;
//!   `24:00` is allowed as an end.
//! - `DAY HH:MM-DAY HH:MM`: one stretch from a day and time to a later day and time, at most a
//!   week (`Sat 00:00-Mon 06:00`).

use std::fmt;
use std::str::FromStr;

use jiff::civil::DateTime;

const DAY: u32 = 86_400;
const WEEK: u32 = 7 * DAY;
const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// A weekly window such as `Mon-Fri 09:00-17:00` or `Fri 22:00-02:00` (crossing midnight), read in
/// a zone's civil time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Window {
    /// As written, for messages.
    pub(crate) text: String,
    /// Stretches of the week: (start, length) in seconds, the start counted from Monday 00:00.
    spans: Vec<(u32, u32)>,
}

impl Window {
    /// Whether the civil time `at` is inside: start inclusive, end exclusive.
    pub(crate) fn contains(&self, at: DateTime) -> bool {
        let day = u32::from(at.weekday().to_monday_zero_offset().unsigned_abs());
        let second = day * DAY
            + u32::from(at.hour().unsigned_abs()) * 3600
            + u32::from(at.minute().unsigned_abs()) * 60
            + u32::from(at.second().unsigned_abs());
        self.spans
            .iter()
            .any(|&(start, len)| (second + WEEK - start) % WEEK < len)
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Window {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "invalid window `{text}`: {why}; write e.g. `Mon-Fri 09:00-17:00`, `Fri 22:00-02:00`, `Sat,Sun 10:00-12:00`, `09:00-17:00` (every day) or `Sat 00:00-Mon 06:00`"
            )
        };
        // Spaces around `-` and `,` carry no meaning: `Mon - Fri 09:00 - 17:00` reads the same.
        let mut compact = text.trim().to_ascii_lowercase();
        for sep in ["-", ","] {
            while compact.contains(&format!(" {sep}")) || compact.contains(&format!("{sep} ")) {
                compact = compact
                    .replace(&format!(" {sep}"), sep)
                    .replace(&format!("{sep} "), sep);
            }
        }
        let tokens: Vec<&str> = compact.split_whitespace().collect();
        let spans = match tokens.as_slice() {
            [times] if !times.contains(':') => return Err(bad("no time range `HH:MM-HH:MM`")),
            [times] => daily(&(0..7).collect::<Vec<_>>(), times).map_err(|w| bad(&w))?,
            [days, times] => {
                daily(&days_list(days).map_err(|w| bad(&w))?, times).map_err(|w| bad(&w))?
            }
            [day1, middle, time2] => {
                let (time1, day2) = middle
                    .split_once('-')
                    .ok_or_else(|| bad("expected `DAY HH:MM-DAY HH:MM`"))?;
                let start = day_index(day1).map_err(|w| bad(&w))? * DAY
                    + time_of_day(time1, false).map_err(|w| bad(&w))?;
                let end = day_index(day2).map_err(|w| bad(&w))? * DAY
                    + time_of_day(time2, false).map_err(|w| bad(&w))?;
                let len = (end + WEEK - start) % WEEK;
                if len == 0 {
                    return Err(bad("it starts and ends at the same time of the week"));
                }
                vec![(start, len)]
            }
            _ => return Err(bad("expected days and a time range")),
        };
        Ok(Window {
            text: text.trim().to_owned(),
            spans,
        })
    }
}

/// The spans of `HH:MM-HH:MM` on each of `days`.
fn daily(days: &[u32], times: &str) -> Result<Vec<(u32, u32)>, String> {
    let (start, end) = times
        .split_once('-')
        .ok_or_else(|| format!("expected a time range `HH:MM-HH:MM`, got `{times}`"))?;
    let start = time_of_day(start, false)?;
    let end = time_of_day(end, true)?;
    // An end at or before the start crosses midnight; equal means a whole day.
    let len = if end > start {
        end - start
    } else {
        end + DAY - start
    };
    Ok(days.iter().map(|d| (d * DAY + start, len)).collect())
}

/// `Mon-Fri`, `Sat,Sun`, `Mon,Wed-Fri`, `Fri-Mon` (wrapping): day indexes from Monday = 0.
fn days_list(text: &str) -> Result<Vec<u32>, String> {
    let mut days = Vec::new();
    for item in text.split(',') {
        match item.split_once('-') {
            None => days.push(day_index(item)?),
            Some((from, to)) => {
                let (from, to) = (day_index(from)?, day_index(to)?);
                let mut d = from;
                loop {
                    days.push(d);
                    if d == to {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
        }
    }
    days.sort_unstable();
    days.dedup();
    Ok(days)
}

fn day_index(text: &str) -> Result<u32, String> {
    DAY_NAMES
        .iter()
        .position(|d| *d == text)
        .and_then(|i| u32::try_from(i).ok())
        .ok_or_else(|| format!("unknown day `{text}` (days are Mon, Tue, Wed, Thu, Fri, Sat, Sun)"))
}

/// `HH:MM` as seconds since midnight; `24:00` only when `end`.
fn time_of_day(text: &str, end: bool) -> Result<u32, String> {
    let bad = || format!("invalid time `{text}`: write `HH:MM` from 00:00 to 23:59");
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: u32 = h.parse().map_err(|_| bad())?;
    let m: u32 = m.parse().map_err(|_| bad())?;
    if end && h == 24 && m == 0 {
        return Ok(DAY);
    }
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok(h * 3600 + m * 60)
}

#[cfg(test)]
mod tests {
    use super::Window;
    use jiff::civil::{DateTime, date};

    fn at(y: i16, mo: i8, d: i8, h: i8, mi: i8) -> DateTime {
        date(y, mo, d).at(h, mi, 0, 0)
    }

    fn w(text: &str) -> Window {
        text.parse().unwrap()
    }

    #[test]
    fn business_hours_are_start_inclusive_end_exclusive() {
        let business = w("Mon-Fri 09:00-17:00");
        // 2027-03-01 is a Monday.
        assert!(business.contains(at(2027, 3, 1, 9, 0)));
        assert!(business.contains(at(2027, 3, 5, 16, 59)));
        assert!(!business.contains(at(2027, 3, 5, 17, 0)));
        assert!(!business.contains(at(2027, 3, 1, 8, 59)));
        assert!(!business.contains(at(2027, 3, 6, 10, 0)), "Saturday");
    }

    #[test]
    fn a_window_ending_before_it_starts_crosses_midnight_into_the_next_day() {
        let late = w("Fri 22:00-02:00");
        // 2027-03-05 is a Friday.
        assert!(late.contains(at(2027, 3, 5, 22, 0)));
        assert!(
            late.contains(at(2027, 3, 6, 1, 59)),
            "Saturday early is Friday's window"
        );
        assert!(!late.contains(at(2027, 3, 6, 2, 0)));
        assert!(
            !late.contains(at(2027, 3, 5, 1, 0)),
            "Friday early is Thursday's"
        );
        assert!(!late.contains(at(2027, 3, 6, 22, 30)), "Saturday night");
        // Sunday night into Monday wraps the week.
        let sunday = w("Sun 23:00-01:00");
        assert!(sunday.contains(at(2027, 3, 8, 0, 30)), "Monday 00:30");
        assert!(!sunday.contains(at(2027, 3, 7, 0, 30)), "Sunday 00:30");
    }

    #[test]
    fn a_span_across_days_covers_the_days_between() {
        let weekend = w("Sat 00:00-Mon 06:00");
        assert!(weekend.contains(at(2027, 3, 6, 0, 0)));
        assert!(weekend.contains(at(2027, 3, 7, 12, 0)));
        assert!(weekend.contains(at(2027, 3, 8, 5, 59)));
        assert!(!weekend.contains(at(2027, 3, 8, 6, 0)));
        assert!(!weekend.contains(at(2027, 3, 5, 23, 59)));
    }

    #[test]
    fn day_lists_every_day_and_whole_days() {
        let w1 = w("Sat,Sun 10:00-12:00");
        assert!(w1.contains(at(2027, 3, 7, 11, 0)));
        assert!(!w1.contains(at(2027, 3, 8, 11, 0)));
        let every = w("09:00-17:00");
        assert!((1..=7).all(|d| every.contains(at(2027, 3, d, 9, 30))));
        let wrap = w("fri-mon 00:00-24:00");
        assert!(wrap.contains(at(2027, 3, 8, 23, 59)));
        assert!(!wrap.contains(at(2027, 3, 9, 0, 0)), "Tuesday");
        let whole = w("Wed 08:00-08:00");
        assert!(
            whole.contains(at(2027, 3, 4, 7, 59)),
            "24 hours from Wednesday 08:00"
        );
        assert!(!whole.contains(at(2027, 3, 4, 8, 0)));
        assert_eq!(
            w("Mon - Fri  09:00 - 17:00").text,
            "Mon - Fri  09:00 - 17:00"
        );
        assert!(w("Mon - Fri  09:00 - 17:00").contains(at(2027, 3, 1, 9, 0)));
    }

    #[test]
    fn bad_windows_say_what_is_wrong() {
        let err = |t: &str| t.parse::<Window>().unwrap_err();
        assert!(
            err("Mon-Fri 9-17").contains("invalid time `9`"),
            "{}",
            err("Mon-Fri 9-17")
        );
        assert!(err("Mon-Fry 09:00-17:00").contains("unknown day `fry`"));
        assert!(err("Mon 25:00-26:00").contains("invalid time `25:00`"));
        assert!(err("Sat 00:00-Sat 00:00").contains("same time of the week"));
        assert!(
            err("Mon-Fri 09:00-17:00 extra")
                .starts_with("invalid window `Mon-Fri 09:00-17:00 extra`: unknown day `mon-fri`")
        );
        assert!(err("").contains("expected days and a time range"));
        assert!(err("24:00-01:00").contains("invalid time `24:00`"));
    }
}
