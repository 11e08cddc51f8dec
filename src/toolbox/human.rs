//! Output for people: ages ("3 min ago"), sizes ("1.2 MB") and aligned columns.

use time::OffsetDateTime;

/// How long ago `at` was, in the largest unit that fits.
pub fn ago(at: OffsetDateTime, now: OffsetDateTime) -> String {
    let seconds = (now - at).whole_seconds();
    if seconds < 0 {
        return "in the future".to_owned();
    }
    match seconds {
        0..=59 => format!("{seconds} s ago"),
        60..=3599 => format!("{} min ago", seconds / 60),
        3600..=172_799 => format!("{} h ago", seconds / 3600),
        _ => format!("{} days ago", seconds / 86_400),
    }
}

/// Bytes in decimal units, one decimal place above a kilobyte.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["kB", "MB", "GB", "TB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1000.0;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `rows` under `header`, each column as wide as its widest cell, two spaces between.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        padded.join("  ").trim_end().to_owned()
    };
    let mut out = vec![line(header.to_vec())];
    out.extend(rows.iter().map(|row| line(row.iter().map(String::as_str).collect())));
    out.join("\n") + "\n"
}

/// A duration such as `24h`, `7d`, `30m` or `90s`.
pub fn parse_since(text: &str) -> Option<time::Duration> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    let n: i64 = number.parse().ok()?;
    let seconds_per = match unit {
        "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    // Anything past a century is a typing slip, not a window.
    n.checked_mul(seconds_per).filter(|s| *s <= 100 * 366 * 86_400).map(time::Duration::seconds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn ages_read_in_the_largest_unit_that_fits() {
        let now = datetime!(2026-12-02 12:00:00 UTC);
        let cases = [(5, "5 s ago"), (180, "3 min ago"), (7200, "2 h ago"), (3 * 86_400, "3 days ago")];
        for (seconds, expected) in cases {
            assert_eq!(ago(now - time::Duration::seconds(seconds), now), expected);
        }
    }

    #[test]
    fn sizes_are_decimal_with_one_place() {
        assert_eq!([size(999), size(1500), size(63_000_000)], ["999 B", "1.5 kB", "63.0 MB"]);
    }

    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let out = table(&["a", "bb"], &[vec!["xyz".into(), "1".into()], vec!["q".into(), "22".into()]]);
        assert_eq!(out, "a    bb\nxyz  1\nq    22\n");
    }

    #[test]
    fn since_takes_seconds_minutes_hours_and_days_and_nothing_else() {
        assert_eq!(parse_since("24h"), Some(time::Duration::hours(24)));
        assert_eq!(parse_since("7d"), Some(time::Duration::days(7)));
        assert_eq!(parse_since("30m"), Some(time::Duration::minutes(30)));
        assert_eq!((parse_since("h"), parse_since("5y"), parse_since("12")), (None, None, None));
        assert_eq!((parse_since("100000000d"), parse_since("99999999999999999999s")), (None, None));
    }
}
