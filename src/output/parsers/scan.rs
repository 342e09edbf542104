//! Finding markers (tags, special-token text) in streamed text. The one rule every
//! streaming parser here follows: emit text as soon as no marker can start inside it, and
//! hold back only a tail that is still a prefix of some marker. Decisions depend on the
//! text alone, never on where the deltas were cut, so that streaming and non-streaming
//! parsing agree.

/// The first marker event in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Scan {
    /// `tags[tag]` occurs whole at byte `at`.
    Found { at: usize, tag: usize },
    /// The text from byte `at` to the end is a proper prefix of a marker: wait for more.
    Partial { at: usize },
    /// No marker starts anywhere in the buffer.
    Clear,
}

/// The first position where a marker occurs or may still occur. At each position the tags
/// are tried in order, so an earlier tag that is only partly there makes a later one that
/// is whole wait too (the two paths must agree whatever the text that follows). At the end
/// of the text nothing can still arrive, so partial markers count as text.
pub(super) fn scan(buf: &str, tags: &[&str], at_end: bool) -> Scan {
    for (at, _) in buf.char_indices() {
        let rest = &buf[at..];
        for (tag, t) in tags.iter().enumerate() {
            if rest.starts_with(t) {
                return Scan::Found { at, tag };
            }
            if !at_end && t.starts_with(rest) {
                return Scan::Partial { at };
            }
        }
    }
    Scan::Clear
}

/// Whether a marker starts a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Marker {
    Yes,
    /// The text is a (possibly empty) proper prefix of the marker: more text decides.
    Maybe,
    No,
}

pub(super) fn marker_at(s: &str, marker: &str, at_end: bool) -> Marker {
    if s.starts_with(marker) {
        Marker::Yes
    } else if !at_end && marker.starts_with(s) {
        Marker::Maybe
    } else {
        Marker::No
    }
}

/// Bytes of leading whitespace.
pub(super) fn ws_len(s: &str) -> usize {
    s.len() - s.trim_start().len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_whole_and_partial_markers() {
        assert_eq!(
            scan("ab</think>c", &["</think>"], false),
            Scan::Found { at: 2, tag: 0 }
        );
        assert_eq!(
            scan("ab</th", &["</think>"], false),
            Scan::Partial { at: 2 }
        );
        assert_eq!(scan("ab</th", &["</think>"], true), Scan::Clear);
        assert_eq!(scan("a<b", &["</think>"], false), Scan::Clear);
        // An earlier partial marker holds back a later whole one.
        assert_eq!(
            scan("<a<b", &["<a<b>", "<b"], false),
            Scan::Partial { at: 0 }
        );
        assert_eq!(
            scan("<a<b", &["<a<b>", "<b"], true),
            Scan::Found { at: 2, tag: 1 }
        );
        // Multi-byte text before a marker.
        assert_eq!(
            scan("é</think>", &["</think>"], false),
            Scan::Found { at: 2, tag: 0 }
        );
    }

    #[test]
    fn marker_at_start() {
        assert_eq!(marker_at("", "<|python_tag|>", false), Marker::Maybe);
        assert_eq!(marker_at("", "<|python_tag|>", true), Marker::No);
        assert_eq!(marker_at("<|py", "<|python_tag|>", false), Marker::Maybe);
        assert_eq!(
            marker_at("<|python_tag|>{", "<|python_tag|>", false),
            Marker::Yes
        );
        assert_eq!(marker_at("{", "<|python_tag|>", false), Marker::No);
    }
}
