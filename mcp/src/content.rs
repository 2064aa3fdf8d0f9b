//! Bytes shown to an MCP client without losing any: text when they are UTF-8 (a character
//! cut at either end of a range is left out, never turned into U+FFFD), an image as image
//! content, anything else as base64.

/// Text of `bytes`, or `None` when they are not text (not UTF-8, or holding NUL bytes).
/// `mid_start`/`mid_end`: the bytes begin/end inside a longer stream, where a character
/// may have been cut; those cut pieces are left out, and counted.
#[derive(Debug, PartialEq, Eq)]
pub struct Text {
    pub text: String,
    /// Bytes left out at the front (the end of a character begun before), and at the back
    /// (the start of a character that goes on after).
    pub front: usize,
    pub back: usize,
}

pub fn as_text(bytes: &[u8], mid_start: bool, mid_end: bool) -> Option<Text> {
    let front = if mid_start { bytes.iter().take(3).take_while(|b| is_continuation(**b)).count() } else { 0 };
    let rest = &bytes[front..];
    let (valid, back) = match std::str::from_utf8(rest) {
        Ok(text) => (text, 0),
        // Only an unfinished character at the very end may be left out (it goes on after).
        Err(e) if mid_end && e.error_len().is_none() => {
            let text = std::str::from_utf8(&rest[..e.valid_up_to()]).expect("valid up to here");
            (text, rest.len() - e.valid_up_to())
        }
        Err(_) => return None,
    };
    if valid.contains('\0') {
        return None;
    }
    Some(Text { text: valid.to_owned(), front, back })
}

fn is_continuation(b: u8) -> bool {
    b & 0b1100_0000 == 0b1000_0000
}

/// The MIME type of an image format MCP clients show, by its first bytes.
pub fn image_type(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        Some("image/jpeg")
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some("image/gif")
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

pub fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A command's whole output stream as JSON fields: `NAME` when it is text, else
/// `NAME_base64` with the exact bytes.
pub fn stream_fields(name: &str, bytes: &[u8], into: &mut serde_json::Map<String, serde_json::Value>) {
    match as_text(bytes, false, false) {
        Some(t) => {
            into.insert(name.to_owned(), t.text.into());
        }
        None => {
            into.insert(format!("{name}_base64"), base64(bytes).into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_kept_whole_and_a_cut_character_is_left_out_not_mangled() {
        let s = "añb€c".as_bytes(); // ñ is 2 bytes, € is 3
        assert_eq!(as_text(s, false, false).unwrap().text, "añb€c");
        // Cut inside €: the back 1 or 2 bytes of it are left out, and counted.
        let cut = &s[..6];
        assert_eq!(as_text(cut, false, true), Some(Text { text: "añb".into(), front: 0, back: 2 }));
        // Begun inside ñ: its second byte is left out.
        assert_eq!(as_text(&s[2..], true, false), Some(Text { text: "b€c".into(), front: 1, back: 0 }));
        // A whole stream that ends cut is not text: nothing goes on after it.
        assert_eq!(as_text(cut, false, false), None);
    }

    #[test]
    fn binary_is_not_text() {
        assert_eq!(as_text(b"\x89PNG\r\n\x1a\n\0\0", false, false), None);
        assert_eq!(as_text(b"ab\0cd", false, false), None, "NUL bytes");
        assert_eq!(as_text(&[0xff, 0xfe, b'a'], false, true), None, "invalid in the middle");
        assert_eq!(image_type(b"\x89PNG\r\n\x1a\n\0\0"), Some("image/png"));
        assert_eq!(image_type(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(image_type(b"plain"), None);
    }

    #[test]
    fn a_stream_is_text_or_exact_base64() {
        let mut m = serde_json::Map::new();
        stream_fields("stdout", b"hi\n", &mut m);
        stream_fields("stderr", &[0x89, b'P', 0], &mut m);
        assert_eq!(m["stdout"], "hi\n");
        assert_eq!(m["stderr_base64"], "iVAA");
        assert!(!m.contains_key("stderr"));
    }
}
