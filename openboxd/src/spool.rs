//! One stream of a job's output on disk, capped: the first [`HEAD`] bytes are kept, and of
//! the rest the newest — between [`SEGMENT`] and twice that — in segment files named by
//! where they start; what falls between is dropped, and reading across it says how much.
//! Only appends and whole-file deletes: whatever a crash leaves, the files say what is
//! kept, and the stream's length.
//!
//! `NAME.head` holds the head; `NAME.OFFSET` a tail segment starting at byte OFFSET of the
//! stream.

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

/// Bytes kept from the start of a stream.
pub const HEAD: u64 = 8 << 20;
/// A tail segment's size before the next one starts; the older of two goes when a third
/// would start, so the tail keeps at least this much of the newest output.
pub const SEGMENT: u64 = 60 << 20;

pub struct Spool {
    dir: PathBuf,
    name: &'static str,
    head: u64,
    /// Tail segments, oldest first: (start offset, length).
    segments: Vec<(u64, u64)>,
    /// The stream's whole length so far.
    len: u64,
    head_max: u64,
    segment_max: u64,
    /// The file appended to last, kept open for the next append.
    writing: Option<(PathBuf, std::fs::File)>,
}

/// A piece read back.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Piece {
    pub bytes: Vec<u8>,
    /// Where the bytes start: later than asked when what was asked for was dropped.
    pub from: u64,
    /// Where to read on from.
    pub next: u64,
}

impl Spool {
    /// The stream `name` in `dir`, as its files left it.
    pub fn open(dir: &Path, name: &'static str) -> std::io::Result<Spool> {
        Spool::with_caps(dir, name, HEAD, SEGMENT)
    }

    fn with_caps(dir: &Path, name: &'static str, head_max: u64, segment_max: u64) -> std::io::Result<Spool> {
        std::fs::create_dir_all(dir)?;
        let head = std::fs::metadata(dir.join(format!("{name}.head"))).map_or(0, |m| m.len());
        let mut segments = Vec::new();
        for entry in std::fs::read_dir(dir)?.flatten() {
            let file = entry.file_name();
            let Some(start) = file.to_str().and_then(|f| f.strip_prefix(name)?.strip_prefix('.')?.parse::<u64>().ok())
            else {
                continue;
            };
            segments.push((start, entry.metadata()?.len()));
        }
        segments.sort();
        let len = segments.last().map_or(head, |(start, len)| start + len);
        Ok(Spool { dir: dir.to_owned(), name, head, segments, len, head_max, segment_max, writing: None })
    }

    /// The stream's whole length: every byte ever appended, kept or not.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Bytes appended but no longer kept.
    pub fn dropped(&self) -> u64 {
        let kept: u64 = self.head + self.segments.iter().map(|(_, l)| l).sum::<u64>();
        self.len - kept
    }

    fn path(&self, part: &str) -> PathBuf {
        self.dir.join(format!("{}.{part}", self.name))
    }

    pub fn append(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        if self.head < self.head_max && self.segments.is_empty() {
            let take = data.len().min((self.head_max - self.head) as usize);
            let head = self.path("head");
            self.append_to(head, &data[..take])?;
            self.head += take as u64;
            self.len += take as u64;
            data = &data[take..];
        }
        while !data.is_empty() {
            let full = self.segments.last().is_none_or(|(_, l)| *l >= self.segment_max);
            if full {
                if self.segments.len() == 2 {
                    let (start, _) = self.segments.remove(0);
                    std::fs::remove_file(self.path(&start.to_string()))?;
                }
                self.segments.push((self.len, 0));
                std::fs::File::create(self.path(&self.len.to_string()))?;
            }
            let (start, seg_len) = *self.segments.last().expect("one at least");
            let take = data.len().min((self.segment_max - seg_len) as usize);
            let segment = self.path(&start.to_string());
            self.append_to(segment, &data[..take])?;
            self.segments.last_mut().expect("one at least").1 += take as u64;
            self.len += take as u64;
            data = &data[take..];
        }
        Ok(())
    }

    /// At most `max` bytes from `offset` on, from one file; when `offset` was dropped,
    /// from the first byte kept after it.
    pub fn read(&self, offset: u64, max: usize) -> std::io::Result<Piece> {
        let offset = offset.min(self.len);
        let (file, start, file_len) = if offset < self.head {
            (self.path("head"), 0, self.head)
        } else {
            match self.segments.iter().find(|(s, l)| offset < s + l) {
                Some((s, l)) => (self.path(&s.to_string()), *s, *l),
                None => return Ok(Piece { bytes: Vec::new(), from: self.len, next: self.len }),
            }
        };
        let from = offset.max(start);
        let take = ((start + file_len - from) as usize).min(max);
        let mut f = std::fs::File::open(file)?;
        f.seek(SeekFrom::Start(from - start))?;
        let mut bytes = vec![0u8; take];
        f.read_exact(&mut bytes)?;
        Ok(Piece { bytes, from, next: from + take as u64 })
    }
}

impl Spool {
    /// Appends to `path`, through the file kept open when it is the one written last.
    fn append_to(&mut self, path: PathBuf, data: &[u8]) -> std::io::Result<()> {
        if self.writing.as_ref().is_none_or(|(p, _)| *p != path) {
            let file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
            self.writing = Some((path, file));
        }
        self.writing.as_mut().expect("just opened").1.write_all(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(s: &Spool) -> (Vec<u8>, Vec<(u64, u64)>) {
        let (mut out, mut gaps, mut at) = (Vec::new(), Vec::new(), 0);
        while at < s.len() {
            let p = s.read(at, 7).unwrap();
            if p.from > at {
                gaps.push((at, p.from));
            }
            out.extend_from_slice(&p.bytes);
            at = p.next;
        }
        (out, gaps)
    }

    #[test]
    fn the_head_and_the_newest_tail_are_kept_and_the_gap_is_said() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::with_caps(dir.path(), "stdout", 10, 20).unwrap();
        let data: Vec<u8> = (0..200u32).map(|i| (i % 251) as u8).collect();
        for piece in data.chunks(13) {
            s.append(piece).unwrap();
        }
        assert_eq!(s.len(), 200);
        let (kept, gaps) = all(&s);
        // The head (10 bytes), then the last two segments: 150..170 and 170..190, 190..200.
        assert_eq!(gaps.len(), 1, "{gaps:?}");
        let (gap_from, gap_to) = gaps[0];
        assert_eq!(gap_from, 10);
        assert_eq!(&kept[..10], &data[..10]);
        assert_eq!(&kept[10..], &data[gap_to as usize..]);
        assert!(200 - gap_to >= 20, "at least one whole segment of the newest output");
        assert_eq!(s.dropped(), gap_to - 10);

        // Opened again, the files say the same.
        let again = Spool::with_caps(dir.path(), "stdout", 10, 20).unwrap();
        assert_eq!((again.len(), again.dropped()), (s.len(), s.dropped()));
        assert_eq!(all(&again), (kept, gaps));
    }

    #[test]
    fn a_short_stream_is_kept_whole_and_read_from_any_offset() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), "stderr").unwrap();
        s.append(b"hello ").unwrap();
        s.append(b"world\n").unwrap();
        assert_eq!(s.read(6, 100).unwrap(), Piece { bytes: b"world\n".to_vec(), from: 6, next: 12 });
        assert_eq!(s.read(50, 100).unwrap(), Piece { bytes: vec![], from: 12, next: 12 });
        assert_eq!(s.dropped(), 0);
    }
}
