//! Stop strings, found in the detokenized text across token boundaries (as vLLM's
//! `check_stop_strings`). Text is fed in deltas; unless the stop string is to be kept in
//! the output, the last `max(len(stop)) - 1` characters are held back from the emitted
//! text, so that a stop string arriving over several deltas is caught before any of it
//! is emitted. Only a short window of recent text is kept, never the whole output.

#[derive(Clone)]
pub struct StopChecker {
    stop: Vec<String>,
    include: bool,
    /// Characters of context to keep: the longest stop string's length minus one.
    keep_chars: usize,
    /// The last `keep_chars` characters of the text so far.
    window: String,
    /// Bytes at the end of `window` not emitted yet.
    held: usize,
}

impl StopChecker {
    /// None when there are no stop strings.
    pub fn new(stop: &[String], include_stop_str_in_output: bool) -> Option<StopChecker> {
        let longest = stop.iter().map(|s| s.chars().count()).max()?;
        Some(StopChecker {
            stop: stop.to_vec(),
            include: include_stop_str_in_output,
            keep_chars: longest.saturating_sub(1),
            window: String::new(),
            held: 0,
        })
    }

    /// Adds new text (one token's delta): appends what can be emitted now to `out`. When
    /// the text so far contains a stop string (checked after each delta: the first delta
    /// that completes one ends the output, at the earliest occurrence, the first listed on
    /// a tie), the emitted text ends at it (after it when it is kept) and its index in the
    /// stop list is returned.
    pub fn push(&mut self, delta: &str, out: &mut String) -> Option<usize> {
        if delta.is_empty() {
            return None;
        }
        let mut text = std::mem::take(&mut self.window);
        let emitted_end = text.len() - self.held;
        text.push_str(delta);
        let mut found: Option<(usize, usize)> = None;
        for (k, s) in self.stop.iter().enumerate() {
            if let Some(i) = text.find(s.as_str()) {
                if found.is_none_or(|(j, _)| i < j) {
                    found = Some((i, k));
                }
            }
        }
        if let Some((i, k)) = found {
            let end = if self.include {
                i + self.stop[k].len()
            } else {
                i
            };
            out.push_str(&text[emitted_end.min(end)..end]);
            self.held = 0;
            return Some(k);
        }
        // The start of the last `keep_chars` characters.
        let tail = text
            .char_indices()
            .rev()
            .nth(self.keep_chars.saturating_sub(1))
            .map_or(0, |(i, _)| i);
        let tail = if self.keep_chars == 0 {
            text.len()
        } else {
            tail
        };
        let cut = if self.include { text.len() } else { tail };
        let new_end = cut.max(emitted_end);
        out.push_str(&text[emitted_end..new_end]);
        self.held = text.len() - new_end;
        self.window = text[tail.min(new_end)..].to_string();
        None
    }

    /// At the end of the output (no stop string found): the text still held back.
    pub fn flush(&mut self, out: &mut String) {
        out.push_str(&self.window[self.window.len() - self.held..]);
        self.held = 0;
    }

    /// The stop string of an index `push` returned.
    pub fn stop_str(&self, k: usize) -> &str {
        &self.stop[k]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `deltas`; returns (emitted text after each delta, the stop found).
    fn feed(stop: &[&str], include: bool, deltas: &[&str]) -> (Vec<String>, Option<String>) {
        let stop: Vec<String> = stop.iter().map(|s| s.to_string()).collect();
        let mut c = StopChecker::new(&stop, include).unwrap();
        let mut outs = vec![];
        for d in deltas {
            let mut out = String::new();
            if let Some(k) = c.push(d, &mut out) {
                outs.push(out);
                return (outs, Some(c.stop_str(k).to_string()));
            }
            outs.push(out);
        }
        let mut out = String::new();
        c.flush(&mut out);
        outs.push(out);
        (outs, None)
    }

    /// The plain reference: the text after the first delta that completes a stop string,
    /// cut at the earliest occurrence of one.
    fn reference(stop: &[&str], include: bool, deltas: &[&str]) -> (String, Option<String>) {
        let mut text = String::new();
        for d in deltas {
            text.push_str(d);
            let mut best: Option<(usize, &str)> = None;
            for s in stop {
                if let Some(i) = text.find(s) {
                    if best.is_none_or(|(j, _)| i < j) {
                        best = Some((i, s));
                    }
                }
            }
            if let Some((i, s)) = best {
                let end = if include { i + s.len() } else { i };
                return (text[..end].to_string(), Some(s.to_string()));
            }
        }
        (text, None)
    }

    #[test]
    fn stop_strings_across_deltas_equal_the_reference() {
        let deltas_sets: [&[&str]; 6] = [
            &["Hello", " wor", "ld", "!"],
            &["a", "b", "c", "d", "e", "f"],
            &["xx", "ST", "O", "P", "yy"],
            &["é", "ß", "日本", "語", "!"],
            &["no stop here"],
            &["ab", "cab", "c"],
        ];
        let stops: [&[&str]; 6] = [
            &["world"],
            &["cde", "e"],
            &["STOP", "TO"],
            &["本語", "ß日"],
            &["zzz"],
            &["abc", "bca"],
        ];
        for deltas in deltas_sets {
            for stop in stops {
                for include in [false, true] {
                    let (outs, found) = feed(stop, include, deltas);
                    let (want, want_stop) = reference(stop, include, deltas);
                    assert_eq!(
                        (outs.concat(), found),
                        (want, want_stop),
                        "{deltas:?} {stop:?} include={include}"
                    );
                }
            }
        }
    }

    #[test]
    fn held_back_text_never_shows_a_stop_string_prefix() {
        // "STOP" over three deltas: nothing of it is emitted before the match.
        let (outs, found) = feed(&["STOP"], false, &["abc S", "T", "OP tail"]);
        assert_eq!(found.as_deref(), Some("STOP"));
        assert_eq!(outs, ["ab", "c", " "]);
        // Kept in the output: nothing needs holding back.
        let (outs, _) = feed(&["STOP"], true, &["abc S", "T", "OP tail"]);
        assert_eq!(outs, ["abc S", "T", "OP"]);
    }
}
