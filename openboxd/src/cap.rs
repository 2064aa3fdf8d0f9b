//! `--max-output SIZE`: a command's output kept to its head and its tail, each stream on
//! its own, with a clear mark for what was left out — so that a flood never fills a
//! terminal or an AI agent's context. The head is passed on as it arrives; the tail waits
//! (at most half the cap) until the command ends.

use std::collections::VecDeque;

pub use proto::rpc::Truncated;

/// One stream under a cap.
struct Stream {
    /// What may still pass at once.
    head_left: u64,
    /// The newest bytes past the head, at most `tail_max`.
    tail: VecDeque<u8>,
    tail_max: usize,
    omitted: u64,
    /// The last byte passed on, to put the mark on a line of its own.
    last: Option<u8>,
}

impl Stream {
    fn new(limit: u64) -> Stream {
        let head = limit.div_ceil(2);
        Stream { head_left: head, tail: VecDeque::new(), tail_max: (limit - head) as usize, omitted: 0, last: None }
    }

    /// The part of `data` to pass on now; the rest goes to the tail.
    fn take<'d>(&mut self, data: &'d [u8]) -> &'d [u8] {
        let mut now = data.len().min(self.head_left as usize);
        if now < data.len() {
            // The head ends before a character it would cut (UTF-8: its first byte is at
            // most 3 back), so text stays text on both sides of the mark.
            let mut start = now;
            while start > 0 && now - start < 3 && is_continuation(data[start]) {
                start -= 1;
            }
            if !is_continuation(data[start]) {
                now = start;
            }
            self.head_left = 0;
        } else {
            self.head_left -= now as u64;
        }
        let (head, rest) = data.split_at(now);
        if let Some(b) = head.last() {
            self.last = Some(*b);
        }
        if rest.len() >= self.tail_max {
            self.omitted += (self.tail.len() + rest.len() - self.tail_max) as u64;
            self.tail.clear();
            self.tail.extend(&rest[rest.len() - self.tail_max..]);
        } else {
            let overflow = (self.tail.len() + rest.len()).saturating_sub(self.tail_max);
            self.omitted += overflow as u64;
            self.tail.drain(..overflow);
            self.tail.extend(rest);
        }
        head
    }

    /// What is left to write at the end: the mark (when bytes were left out) and the tail.
    fn end(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if self.omitted > 0 {
            // Nor does the tail begin inside a character.
            let cut = self.tail.iter().take(3).take_while(|b| is_continuation(**b)).count();
            self.tail.drain(..cut);
            self.omitted += cut as u64;
            if self.last.is_some_and(|b| b != b'\n') {
                out.push(b'\n');
            }
            out.extend_from_slice(format!("[… {} bytes omitted …]\n", self.omitted).as_bytes());
        }
        out.extend(self.tail.drain(..));
        out
    }
}

/// A byte inside a UTF-8 character, not its first.
fn is_continuation(b: u8) -> bool {
    b & 0b1100_0000 == 0b1000_0000
}

/// An output under a cap (or none: then everything passes).
pub struct Capped<'a, O> {
    inner: &'a mut O,
    streams: Option<(Stream, Stream)>,
}

impl<'a, O: net::ssh::Output> Capped<'a, O> {
    pub fn new(inner: &'a mut O, limit: Option<u64>) -> Capped<'a, O> {
        Capped { inner, streams: limit.map(|l| (Stream::new(l), Stream::new(l))) }
    }

    /// Writes what the cap held back, and says which streams lost bytes.
    pub async fn finish(mut self) -> Truncated {
        let Some((mut out, mut err)) = self.streams.take() else {
            return Truncated::default();
        };
        let truncated = Truncated { stdout: out.omitted > 0, stderr: err.omitted > 0 };
        let (rest_out, rest_err) = (out.end(), err.end());
        if !rest_out.is_empty() {
            let _ = self.inner.stdout(&rest_out).await;
        }
        if !rest_err.is_empty() {
            let _ = self.inner.stderr(&rest_err).await;
        }
        truncated
    }
}

impl<O: net::ssh::Output> net::ssh::Output for Capped<'_, O> {
    async fn stdout(&mut self, data: &[u8]) -> std::io::Result<()> {
        let now = match &mut self.streams {
            Some((out, _)) => out.take(data),
            None => data,
        };
        if now.is_empty() { Ok(()) } else { self.inner.stdout(now).await }
    }

    async fn stderr(&mut self, data: &[u8]) -> std::io::Result<()> {
        let now = match &mut self.streams {
            Some((_, err)) => err.take(data),
            None => data,
        };
        if now.is_empty() { Ok(()) } else { self.inner.stderr(now).await }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces` to one stream capped at `limit`; everything it writes.
    fn capped(limit: u64, pieces: &[&[u8]]) -> (Vec<u8>, u64) {
        let mut s = Stream::new(limit);
        let mut out = Vec::new();
        for p in pieces {
            out.extend_from_slice(s.take(p));
        }
        out.extend(s.end());
        (out, s.omitted)
    }

    #[test]
    fn the_head_and_the_tail_are_kept_with_a_mark_between() {
        assert_eq!(capped(10, &[b"short\n"]), (b"short\n".to_vec(), 0), "under the cap: untouched");
        assert_eq!(capped(10, &[b"0123456789"]), (b"0123456789".to_vec(), 0), "exactly the cap");
        let (out, omitted) = capped(10, &[b"0123456789abcdef\n"]);
        assert_eq!(omitted, 7);
        assert_eq!(String::from_utf8(out).unwrap(), "01234\n[… 7 bytes omitted …]\ncdef\n");
        // Any way the bytes arrive, the same result.
        let data: Vec<u8> = (0..1000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let whole = capped(100, &[&data]);
        let pieces: Vec<&[u8]> = data.chunks(7).collect();
        assert_eq!(capped(100, &pieces), whole);
        assert_eq!(whole.1, 900);
        // Text cut by the cap stays text: no character is split at either side of the mark.
        let euros = "€".repeat(100);
        for limit in [10, 11, 12, 13, 101] {
            let (out, omitted) = capped(limit, &[euros.as_bytes()]);
            let text = String::from_utf8(out).unwrap_or_else(|e| panic!("cap {limit}: {e}"));
            assert!(text.starts_with('€') && text.ends_with('€'), "cap {limit}: {text}");
            assert!(text.contains(&format!("[… {omitted} bytes omitted …]")), "{text}");
        }
        let text = String::from_utf8(whole.0).unwrap();
        assert!(
            text.starts_with(std::str::from_utf8(&data[..50]).unwrap())
                && text.ends_with(std::str::from_utf8(&data[950..]).unwrap())
        );
    }
}
