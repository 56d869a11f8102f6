//! Values the audit writer writes once per record, written without the
//! formatting machinery: the record's timestamp and its client address.

use std::fmt::Write as _;

/// The last second [`push_rfc3339_millis`] writes itself
/// (9999-12-31T23:59:59Z); later times, and times before 1970, go through
/// `humantime`.
const LAST_FOUR_DIGIT_SECOND: u64 = 253_402_300_799;

/// Writes `at` as `humantime::format_rfc3339_millis` does
/// (`2023-11-14T22:13:20.123Z`), without the formatting machinery: the
/// writer does it once per record.
pub(crate) fn push_rfc3339_millis(out: &mut String, at: std::time::SystemTime) {
    let since = match at.duration_since(std::time::UNIX_EPOCH) {
        Ok(since) if since.as_secs() <= LAST_FOUR_DIGIT_SECOND => since,
        _ => {
            let _ = write!(out, "{}", humantime::format_rfc3339_millis(at));
            return;
        }
    };
    let seconds = since.as_secs();
    let (year, month, day) = civil_date(seconds / 86_400);
    let in_day = seconds % 86_400;
    let millis = since.subsec_millis();
    let mut digits = [0u8; 24];
    let mut put = |at: usize, value: u64, width: usize| {
        let mut value = value;
        for place in (at..at + width).rev() {
            digits[place] = b'0' + u8::try_from(value % 10).unwrap_or(0);
            value /= 10;
        }
    };
    put(0, year, 4);
    put(5, month, 2);
    put(8, day, 2);
    put(11, in_day / 3600, 2);
    put(14, in_day / 60 % 60, 2);
    put(17, in_day % 60, 2);
    put(20, u64::from(millis), 3);
    for (place, separator) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
        (23, b'Z'),
    ] {
        digits[place] = separator;
    }
    out.push_str(std::str::from_utf8(&digits).unwrap_or_default());
}

/// The proleptic Gregorian date of day `days` after 1970-01-01
/// (Howard Hinnant's `civil_from_days`, for days on or after it).
fn civil_date(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Writes `ip` as its `Display` does, IPv4 without the formatting
/// machinery (the writer does it once per record).
pub(crate) fn push_ip(out: &mut String, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut buffer = itoa::Buffer::new();
            for (place, octet) in v4.octets().into_iter().enumerate() {
                if place > 0 {
                    out.push('.');
                }
                out.push_str(buffer.format(octet));
            }
        }
        std::net::IpAddr::V6(_) => {
            let _ = write!(out, "{ip}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn timestamps_read_as_humantime_writes_them(millis in 0u64..(LAST_FOUR_DIGIT_SECOND + 1) * 1000) {
            let at = SystemTime::UNIX_EPOCH + Duration::from_millis(millis);
            let mut out = String::new();
            push_rfc3339_millis(&mut out, at);
            prop_assert_eq!(out, humantime::format_rfc3339_millis(at).to_string());
        }

        #[test]
        fn addresses_read_as_display_writes_them(ip in any::<std::net::IpAddr>()) {
            let mut out = String::new();
            push_ip(&mut out, ip);
            prop_assert_eq!(out, ip.to_string());
        }
    }

    #[test]
    fn the_calendar_edges_read_as_humantime_writes_them() {
        // Leap days, the turn of centuries (2100 is no leap year, 2000 is),
        // the first and last second written by hand.
        for seconds in [
            0,
            951_782_400,
            951_868_799,
            4_107_542_400,
            4_107_542_399,
            1_709_164_800,
            LAST_FOUR_DIGIT_SECOND,
        ] {
            let at = SystemTime::UNIX_EPOCH + Duration::from_millis(seconds * 1000 + 999);
            let mut out = String::new();
            push_rfc3339_millis(&mut out, at);
            assert_eq!(
                out,
                humantime::format_rfc3339_millis(at).to_string(),
                "{seconds}"
            );
        }
    }
}
