//! The clock and how times read to people: the one place every crate takes them from, so
//! two places can never disagree.

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// How far the control plane's clock is ahead of this machine's, in seconds, as last heard.
static CONTROL_OFFSET: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Offsets larger than this are not believed (a clock a day off is broken, not skewed).
const MAX_OFFSET_SECS: i64 = 24 * 3600;

/// The control plane's time now, as far as this process can tell: its own clock, set right
/// by what the control plane last said its time was. Certificates are the control
/// plane's, with its times: judging them by its clock, a laptop and a node whose clocks
/// are minutes apart still agree.
pub fn control_now() -> u64 {
    let offset = CONTROL_OFFSET.load(std::sync::atomic::Ordering::Relaxed);
    now().saturating_add_signed(offset)
}

/// Notes the control plane's time `theirs` (from its answer's `Date`); returns the new
/// offset when it moved by more than a couple of seconds (worth a line in the log).
pub fn heard_control_time(theirs: u64) -> Option<i64> {
    let offset = (theirs as i64 - now() as i64).clamp(-MAX_OFFSET_SECS, MAX_OFFSET_SECS);
    let before = CONTROL_OFFSET.swap(offset, std::sync::atomic::Ordering::Relaxed);
    ((offset - before).abs() > 2).then_some(offset)
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
