//! Wall-clock times as UTC calendar dates, without a date crate: stamps of
//! set-aside copies and log lines.

use std::time::{SystemTime, UNIX_EPOCH};

/// A UTC date and time of day, to the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Utc {
    pub(crate) year: i64,
    pub(crate) month: u32,
    pub(crate) day: u32,
    pub(crate) hour: u32,
    pub(crate) minute: u32,
    pub(crate) second: u32,
}

impl Utc {
    pub(crate) fn at(t: SystemTime) -> Utc {
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
    pub(crate) fn stamp(&self) -> String {
        format!(
            "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }

    /// Seconds since the epoch of a [`Utc::stamp`] (with an optional
    /// `-N` clash suffix); `None` for any other name.
    pub(crate) fn parse_stamp(name: &str) -> Option<u64> {
        let s = name.split_once('-').map_or(name, |(s, n)| {
            if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                ""
            } else {
                s
            }
        });
        let b = s.as_bytes();
        if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
            return None;
        }
        let num = |r: std::ops::Range<usize>| -> Option<i64> {
            let t = &s[r];
            t.bytes()
                .all(|c| c.is_ascii_digit())
                .then(|| t.parse().ok())?
        };
        let (y, m, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
        let (hh, mm, ss) = (num(9..11)?, num(11..13)?, num(13..15)?);
        if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
            return None;
        }
        // Howard Hinnant's days_from_civil.
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146097 + doe - 719468;
        u64::try_from(days * 86400 + hh * 3600 + mm * 60 + ss).ok()
    }

    /// `2026-11-26T22:45:01` (RFC 3339 without the zone).
    pub(crate) fn iso(&self) -> String {
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
        for secs in [0, 951_782_400, 1_795_733_101, 4_102_444_800] {
            let st = Utc::at(UNIX_EPOCH + Duration::from_secs(secs)).stamp();
            assert_eq!(Utc::parse_stamp(&st), Some(secs), "{st}");
            assert_eq!(Utc::parse_stamp(&format!("{st}-2")), Some(secs));
        }
        for bad in [
            "",
            "20261126T224501Z.partial",
            "20261126T224501Z-",
            "20261126T224501Z-x",
            "20261326T224501Z",
            "2026112xT224501Z",
            "20261126-224501Z",
            "notes",
        ] {
            assert_eq!(Utc::parse_stamp(bad), None, "{bad}");
        }
    }
}
