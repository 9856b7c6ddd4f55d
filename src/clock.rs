//! Wall-clock times as UTC calendar dates, without a date crate: stamps of
//! set-aside copies and log lines.

use std::time::{SystemTime, UNIX_EPOCH};

/// A UTC date and time of day, to the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utc {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

impl Utc {
    pub fn at(t: SystemTime) -> Utc {
        let secs = t
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let (days, rem) = (secs / 86400, secs % 86400);
        // Howard Hinnant's civil_from_days.
        let z = days as i64 + 719468;
        let era = z.div_euclid(146097);
        let doe = z.rem_euclid(146097);
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        Utc {
            year: yoe + era * 400 + (month <= 2) as i64,
            month,
            day,
            hour: (rem / 3600) as u32,
            minute: (rem % 3600 / 60) as u32,
            second: (rem % 60) as u32,
        }
    }

    /// `20261126T224501Z`: sorts as it reads; safe in a file name.
    pub fn stamp(&self) -> String {
        format!(
            "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }

    /// `2026-11-26T22:45:01` (RFC 3339 without the zone).
    pub fn iso(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates() {
        assert_eq!(Utc::at(UNIX_EPOCH).stamp(), "19700101T000000Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_733_101);
        assert_eq!(Utc::at(t).stamp(), "20261126T224501Z");
        assert_eq!(Utc::at(t).iso(), "2026-11-26T22:45:01");
        assert_eq!(
            Utc::at(UNIX_EPOCH + Duration::from_secs(951_782_400)).stamp(),
            "20000229T000000Z"
        );
    }
}
