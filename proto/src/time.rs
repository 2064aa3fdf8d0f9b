//! The clock and how times read to people: the one place every crate takes them from, so
//! two places can never disagree.

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A span of seconds in one short unit: `90s`, `15m`, `5h`, `3d` (each unit is used until
/// two of the next fit).
pub fn human_secs(s: u64) -> String {
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// How long before `now` the moment `t` was: `90s ago`, or `never` without one.
pub fn ago(now: u64, t: Option<u64>) -> String {
    match t {
        Some(t) => format!("{} ago", human_secs(now.saturating_sub(t))),
        None => "never".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_in_one_short_unit() {
        assert_eq!(human_secs(0), "0s");
        assert_eq!(human_secs(90), "90s");
        assert_eq!(human_secs(120), "2m");
        assert_eq!(human_secs(7199), "119m");
        assert_eq!(human_secs(7200), "2h");
        assert_eq!(human_secs(3 * 86400), "3d");
    }

    #[test]
    fn ago_counts_back_from_now() {
        assert_eq!(ago(1000, Some(910)), "90s ago");
        assert_eq!(ago(1000, Some(2000)), "0s ago", "a moment in the future is now");
        assert_eq!(ago(1000, None), "never");
    }
}
