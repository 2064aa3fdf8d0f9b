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

/// A span of time on the wire, in seconds: whole (`30`) or with a fraction (`0.5`), a JSON
/// number either way, as a script writes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seconds(pub std::time::Duration);

impl Seconds {
    pub fn from_secs(secs: u64) -> Seconds {
        Seconds(std::time::Duration::from_secs(secs))
    }

    /// A duration as a user writes it (see [`crate::parse_duration`]).
    pub fn parse(text: &str) -> Result<Seconds, crate::Invalid> {
        crate::parse_duration(text).map(Seconds)
    }

    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl std::fmt::Display for Seconds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&span(self.0))
    }
}

/// A timeout as a message tells it: under a second in milliseconds, to ten (`500ms`), else
/// to a tenth of a second (`90s`, `1.5s`) — what is left of a deadline, a hair under what
/// was asked, reads as what was asked.
pub fn span(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    let shown = if ms < 10 { ms.max(1) } else { (ms + 5) / 10 * 10 };
    if shown < 1000 {
        return format!("{shown}ms");
    }
    let text = format!("{:.1}", d.as_secs_f64());
    format!("{}s", text.strip_suffix(".0").unwrap_or(&text))
}

impl serde::Serialize for Seconds {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.subsec_nanos() == 0 {
            s.serialize_u64(self.0.as_secs())
        } else {
            s.serialize_f64(self.0.as_secs_f64())
        }
    }
}

impl<'de> serde::Deserialize<'de> for Seconds {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Seconds, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Seconds;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number of seconds, 0 or more (such as 30 or 0.5)")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Seconds, E> {
                Ok(Seconds::from_secs(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Seconds, E> {
                u64::try_from(v).map(Seconds::from_secs).map_err(|_| E::custom("seconds cannot be negative"))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Seconds, E> {
                std::time::Duration::try_from_secs_f64(v)
                    .map(Seconds)
                    .map_err(|_| E::custom(format!("{v} is not a number of seconds, 0 or more")))
            }
        }
        d.deserialize_any(Visitor)
    }
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

/// When `t` ends, seen from `now`: `in 3d`, `expired 2h ago`, or `unknown` without one.
pub fn expires(now: u64, t: Option<u64>) -> String {
    match t {
        Some(t) if t > now => format!("in {}", human_secs(t - now)),
        Some(t) => format!("expired {} ago", human_secs(now - t)),
        None => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_end_is_told_from_now() {
        assert_eq!(expires(1000, Some(1000 + 7 * 86400)), "in 7d");
        assert_eq!(expires(1000, Some(1090)), "in 90s");
        assert_eq!(expires(1000, Some(1000)), "expired 0s ago");
        assert_eq!(expires(8200, Some(1000)), "expired 2h ago");
        assert_eq!(expires(1000, None), "unknown");
    }

    #[test]
    fn seconds_travel_as_whole_or_fractional_numbers() {
        let read = |json: &str| serde_json::from_str::<Seconds>(json);
        assert_eq!(read("30").unwrap(), Seconds::from_secs(30));
        assert_eq!(read("0.5").unwrap(), Seconds(std::time::Duration::from_millis(500)));
        for bad in ["-1", "-0.5", "\"30s\"", "1e400"] {
            assert!(read(bad).is_err(), "{bad}");
        }
        assert_eq!(serde_json::to_string(&Seconds::from_secs(90)).unwrap(), "90");
        assert_eq!(serde_json::to_string(&Seconds(std::time::Duration::from_millis(1500))).unwrap(), "1.5");
        assert_eq!(Seconds(std::time::Duration::from_millis(500)).to_string(), "500ms");
        assert_eq!(span(std::time::Duration::from_millis(499)), "500ms");
        assert_eq!(span(std::time::Duration::from_millis(3)), "3ms");
        assert_eq!(span(std::time::Duration::from_millis(997)), "1s");
        assert_eq!(Seconds::from_secs(90).to_string(), "90s");
        assert_eq!(span(std::time::Duration::from_millis(2998)), "3s");
        assert_eq!(span(std::time::Duration::from_millis(1499)), "1.5s");
    }

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
