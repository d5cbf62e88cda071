//! RFC 3339 date-times (`2024-05-01T12:00:00Z`, `2024-05-01T14:00:00.25+02:00`) read as
//! instants, so that filters compare them whatever offset each was written with.

/// Nanoseconds since 1970-01-01T00:00:00Z of an RFC 3339 `date-time`: `YYYY-MM-DD`, `T`
/// (or `t`, or a space), `HH:MM:SS`, optional fraction (any number of digits; beyond
/// nanoseconds they are cut off), then `Z`, `z` or `+HH:MM`/`-HH:MM`. Years 0000-9999;
/// the day must exist in its month; a leap second (`:60`) counts as the next second.
/// Anything else is `None`.
pub(super) fn parse(s: &str) -> Option<i128> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |from: usize, len: usize| -> Option<i64> {
        b.get(from..from + len)?.iter().try_fold(0i64, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
        })
    };
    let punct = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
    if punct.iter().any(|&(i, c)| b[i] != c) || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &b[19..];
    let mut nanos = 0i128;
    if let Some((b'.', after)) = rest.split_first() {
        let digits = after.iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        let padded = after[..digits].iter().chain(std::iter::repeat(&b'0'));
        for d in padded.take(9) {
            nanos = nanos * 10 + i128::from(d - b'0');
        }
        rest = &after[digits..];
    }
    let offset_minutes = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let two = |a: u8, b: u8| {
                (a.is_ascii_digit() && b.is_ascii_digit())
                    .then(|| i64::from(a - b'0') * 10 + i64::from(b - b'0'))
            };
            let (h, m) = (two(*h1, *h2)?, two(*m1, *m2)?);
            if h > 23 || m > 59 {
                return None;
            }
            if *sign == b'+' {
                h * 60 + m
            } else {
                -(h * 60 + m)
            }
        }
        _ => return None,
    };
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second
        - offset_minutes * 60;
    Some(i128::from(seconds) * 1_000_000_000 + nanos)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::parse;

    const NS: i128 = 1_000_000_000;

    #[test]
    fn instants_are_nanoseconds_since_the_epoch_whatever_the_offset() {
        assert_eq!(parse("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse("1970-01-01T00:00:01.5Z"), Some(NS + NS / 2));
        assert_eq!(parse("2024-01-01T00:00:00Z"), Some(1_704_067_200 * NS));
        assert_eq!(
            parse("2024-01-01T01:00:00+01:00"),
            parse("2024-01-01T00:00:00Z")
        );
        assert_eq!(
            parse("2023-12-31t19:30:00-04:30"),
            parse("2024-01-01 00:00:00z")
        );
        assert_eq!(
            parse("2024-01-01T00:00:00-00:00"),
            parse("2024-01-01T00:00:00Z")
        );
        assert_eq!(parse("2024-02-29T00:00:00Z"), Some(1_709_164_800 * NS));
        assert_eq!(parse("1969-12-31T23:59:59.999999999Z"), Some(-1));
        assert_eq!(parse("0000-03-01T00:00:00Z"), Some(-62_162_035_200 * NS));
        assert_eq!(parse("9999-12-31T23:59:59Z"), Some(253_402_300_799 * NS));
        assert_eq!(
            parse("2024-01-01T00:00:00.1234567891234Z"),
            Some(1_704_067_200 * NS + 123_456_789)
        );
        assert_eq!(parse("2016-12-31T23:59:60Z"), parse("2017-01-01T00:00:00Z"));
    }

    #[test]
    fn anything_but_a_full_rfc_3339_date_time_is_refused() {
        for s in [
            "",
            "2024",
            "2024-01-01",
            "2024-01-01T00:00:00",
            "2024-01-01T00:00Z",
            "2024-1-01T00:00:00Z",
            "2024-01-01X00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-00-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-04-31T00:00:00Z",
            "2024-01-00T00:00:00Z",
            "2024-01-01T24:00:00Z",
            "2024-01-01T00:60:00Z",
            "2024-01-01T00:00:61Z",
            "2024-01-01T00:00:00.Z",
            "2024-01-01T00:00:00+0100",
            "2024-01-01T00:00:00+24:00",
            "2024-01-01T00:00:00+01:60",
            "2024-01-01T00:00:00Z ",
            " 2024-01-01T00:00:00Z",
            "2024-01-01T00:00:00+01:00:00",
            "+2024-01-01T00:00:00Z",
            "２０２４-01-01T00:00:00Z",
        ] {
            assert_eq!(parse(s), None, "{s:?}");
        }
    }
}
