//! Times given on the command line (`send --reply-by`, `followups
//! --due-before`): an RFC 3339 instant, a date (the end of that day, UTC)
//! or a span from now.

use anyhow::{Result, bail};

/// What `--help` says a time may be.
pub const FORMS: &str = "an RFC 3339 time (2026-12-31T17:00:00Z), a date (2026-12-31: \
                         the end of that day, UTC) or a span from now (30d, 12h, 90m)";

/// `text` as Unix ms, spans counted from `now_ms`.
pub fn parse_when(text: &str, now_ms: u64) -> Result<u64> {
    let text = text.trim();
    if let Some(ms) = span_ms(text)? {
        return Ok(now_ms.saturating_add(ms));
    }
    let rfc3339 = &time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(text, rfc3339) {
        return unix_ms(t, text);
    }
    let date = time::format_description::parse_borrowed::<1>("[year]-[month]-[day]")
        .expect("a valid format");
    if let Ok(d) = time::Date::parse(text, &date) {
        let end = d.with_hms_milli(23, 59, 59, 999).expect("a valid time");
        return unix_ms(end.assume_utc(), text);
    }
    bail!("{text:?} is not a time: give {FORMS}")
}

/// A span such as `30d`, `12h`, `90m` or `45s` in ms; `None` when `text`
/// is not one.
fn span_ms(text: &str) -> Result<Option<u64>> {
    let Some(unit) = text.chars().last() else {
        return Ok(None);
    };
    let per = match unit {
        'd' => 86_400_000,
        'h' => 3_600_000,
        'm' => 60_000,
        's' => 1_000,
        _ => return Ok(None),
    };
    let digits = &text[..text.len() - 1];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| anyhow::anyhow!("{text:?}: the number is too large"))?;
    match n.checked_mul(per) {
        Some(ms) if ms > 0 => Ok(Some(ms)),
        Some(_) => bail!("{text:?} is no time from now: give a span above zero"),
        None => bail!("{text:?}: the span is too long"),
    }
}

fn unix_ms(t: time::OffsetDateTime, text: &str) -> Result<u64> {
    let ms = t.unix_timestamp_nanos() / 1_000_000;
    u64::try_from(ms).map_err(|_| anyhow::anyhow!("{text:?} is before 1970"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn spans_count_from_now() {
        assert_eq!(parse_when("30d", NOW).unwrap(), NOW + 30 * 86_400_000);
        assert_eq!(parse_when("12h", NOW).unwrap(), NOW + 12 * 3_600_000);
        assert_eq!(parse_when(" 90m ", NOW).unwrap(), NOW + 90 * 60_000);
        assert_eq!(parse_when("45s", NOW).unwrap(), NOW + 45_000);
    }

    #[test]
    fn instants_and_dates_are_utc() {
        assert_eq!(
            parse_when("2027-01-06T13:23:22.477Z", NOW).unwrap(),
            1_799_241_802_477
        );
        assert_eq!(
            parse_when("2027-01-06T14:23:22.477+01:00", NOW).unwrap(),
            1_799_241_802_477
        );
        // A date is the last millisecond of that day.
        assert_eq!(parse_when("2027-01-06", NOW).unwrap(), 1_799_279_999_999);
    }

    #[test]
    fn anything_else_is_refused_by_name() {
        for bad in [
            "",
            "soon",
            "0d",
            "-3d",
            "3w",
            "d",
            "2027-13-01",
            "1969-12-31T00:00:00Z",
        ] {
            let err = parse_when(bad, NOW).expect_err(bad).to_string();
            assert!(err.contains(&format!("{:?}", bad.trim())), "{bad}: {err}");
        }
        let err = parse_when("99999999999999999999d", NOW)
            .unwrap_err()
            .to_string();
        assert!(err.contains("too large"), "{err}");
    }
}
