//! Owns the bridge that lets croner walk jiff's civil (wall-clock) times: a time with no zone, so
//! croner never resolves daylight-saving changes itself and `schedule.rs` decides them in one place.

use std::cmp::Ordering;

use croner::errors::CronError;
use croner::{CivilDate, CivilDateTime, CivilTime, CronDateTime, Resolution, Weekday};
use jiff::SignedDuration;
use jiff::civil::DateTime;

/// A civil date and time, as croner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct Civil(pub(super) DateTime);

fn parts(v: i8) -> u32 {
    u32::from(v.unsigned_abs())
}

impl CronDateTime for Civil {
    fn to_civil(&self) -> CivilDateTime {
        let d = self.0;
        // jiff keeps every part in range, so croner's unchecked constructors hold.
        CivilDateTime::new(
            CivilDate::from_parts_unchecked(i32::from(d.year()), parts(d.month()), parts(d.day())),
            CivilTime::from_parts_unchecked(parts(d.hour()), parts(d.minute()), parts(d.second())),
        )
    }

    fn civil_weekday(&self) -> Weekday {
        Weekday::from_days_from_sunday(u32::from(
            self.0.weekday().to_sunday_zero_offset().unsigned_abs(),
        ))
    }

    fn resolve_civil(&self, civil: CivilDateTime) -> Result<Resolution<Self>, CronError> {
        let part = |v: u32| i8::try_from(v).map_err(|_| CronError::InvalidTime);
        let year = i16::try_from(civil.year()).map_err(|_| CronError::InvalidDate)?;
        let dt = DateTime::new(
            year,
            part(civil.month())?,
            part(civil.day())?,
            part(civil.hour())?,
            part(civil.minute())?,
            part(civil.second())?,
            0,
        )
        .map_err(|_| CronError::InvalidDate)?;
        Ok(Resolution::Single(Civil(dt)))
    }

    fn checked_add_seconds(&self, seconds: i64) -> Option<Self> {
        self.0
            .checked_add(SignedDuration::from_secs(seconds))
            .ok()
            .map(Civil)
    }

    fn cmp_instant(&self, other: &Self) -> Ordering {
        self.0.cmp(&other.0)
    }
}
