//! Dates as HTTP and its logs write them, from one UTC breakdown of a [`SystemTime`].
//!
//! Three forms: the IMF-fixdate of `Date` and `Last-Modified` (RFC 9110 §5.6.7,
//! `Sun, 06 Nov 1994 08:49:37 GMT`), the Common Log Format stamp of access logs
//! (`[06/Nov/1994:08:49:37 +0000]`, as gunicorn's `%(t)s`), and the short `1994-11-06 08:49`
//! of directory listings. Parsing stays with `httpdate`. Times before 1970 are shown as the
//! epoch: file times that old are a broken clock, not a date worth a calendar.

use std::fmt::Write as _;
use std::time::SystemTime;

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
const WEEKDAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

/// A UTC calendar time, to the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utc {
    /// The year (1970 or later).
    pub year: u64,
    /// 1 to 12.
    pub month: u8,
    /// 1 to 31.
    pub day: u8,
    /// 0 to 23.
    pub hour: u8,
    /// 0 to 59.
    pub minute: u8,
    /// 0 to 59 (no leap seconds: Unix time has none).
    pub second: u8,
    /// 0 = Monday … 6 = Sunday.
    pub weekday: u8,
}

impl Utc {
    /// Breaks `t` down, to the whole second (truncated).
    pub fn from_system(t: SystemTime) -> Utc {
        Utc::from_unix(unix_secs(t))
    }

    /// Breaks down `secs` seconds since 1970-01-01T00:00:00Z.
    pub fn from_unix(secs: u64) -> Utc {
        let days = secs / 86_400;
        let rem = secs % 86_400;
        // Howard Hinnant's `civil_from_days`, on an era of 400 years starting on 0000-03-01.
        let z = days + 719_468;
        let era = z / 146_097;
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + u64::from(month <= 2);
        Utc {
            year,
            month: month as u8,
            day: day as u8,
            hour: (rem / 3600) as u8,
            minute: (rem / 60 % 60) as u8,
            second: (rem % 60) as u8,
            // 1970-01-01 was a Thursday.
            weekday: ((days + 3) % 7) as u8,
        }
    }

    fn month_name(&self) -> &'static str {
        MONTHS[usize::from(self.month - 1)]
    }

    /// `Sun, 06 Nov 1994 08:49:37 GMT` (RFC 9110 §5.6.7).
    pub fn http(&self) -> String {
        let mut s = String::with_capacity(29);
        let _ = write!(
            s,
            "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
            WEEKDAYS[usize::from(self.weekday)],
            self.day,
            self.month_name(),
            self.year,
            self.hour,
            self.minute,
            self.second
        );
        s
    }

    /// `[06/Nov/1994:08:49:37 +0000]`, the Common Log Format stamp (gunicorn's `%(t)s`).
    pub fn clf(&self) -> String {
        format!(
            "[{:02}/{}/{}:{:02}:{:02}:{:02} +0000]",
            self.day,
            self.month_name(),
            self.year,
            self.hour,
            self.minute,
            self.second
        )
    }

    /// `1994-11-06 08:49`, for listings.
    pub fn short(&self) -> String {
        format!(
            "{}-{:02}-{:02} {:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute
        )
    }
}

/// Whole seconds since the epoch; 0 for earlier times.
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `t` as an HTTP date (`Last-Modified`, and what `If-Range` compares with).
pub fn http_date(t: SystemTime) -> String {
    Utc::from_system(t).http()
}

thread_local! {
    /// The `Date` header value and the second it is for, rebuilt at most once a second (one
    /// runtime thread per worker, so one copy per worker).
    static DATE: std::cell::RefCell<(u64, String)> =
        const { std::cell::RefCell::new((u64::MAX, String::new())) };
}

/// Calls `f` with the current time as an HTTP date, cached for the second.
pub fn with_now(f: impl FnOnce(&[u8])) {
    let secs = unix_secs(SystemTime::now());
    DATE.with(|cell| {
        let mut d = cell.borrow_mut();
        if d.0 != secs {
            *d = (secs, Utc::from_unix(secs).http());
        }
        f(d.1.as_bytes());
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_three_forms() {
        // RFC 9110 §5.6.7's example.
        let t = Utc::from_unix(784_111_777);
        assert_eq!(t.http(), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(t.clf(), "[06/Nov/1994:08:49:37 +0000]");
        assert_eq!(t.short(), "1994-11-06 08:49");
        assert_eq!(Utc::from_unix(0).short(), "1970-01-01 00:00");
    }

    #[test]
    fn agrees_with_httpdate_across_leap_years_and_centuries() {
        let mut secs = 0u64;
        while secs < 8_000_000_000 {
            let t = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
            assert_eq!(http_date(t), httpdate::fmt_http_date(t), "{secs}");
            secs += 86_400 * 13 + 3_677;
        }
    }
}
