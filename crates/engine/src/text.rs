//! Streaming text hygiene: UTF-8 that may be split across tokens, and stop strings that may be
//! split across pieces. Both hold text back until it is safe to send.

/// Append `piece` to `pending` and return the longest prefix that is complete UTF-8; an
/// incomplete tail stays in `pending`. Invalid bytes become U+FFFD rather than an error.
pub fn take_utf8(pending: &mut Vec<u8>, piece: &[u8]) -> String {
    pending.extend_from_slice(piece);
    match std::str::from_utf8(pending) {
        Ok(s) => {
            let out = s.to_owned();
            pending.clear();
            out
        }
        Err(e) if e.error_len().is_none() => {
            let n = e.valid_up_to();
            let out = String::from_utf8_lossy(&pending[..n]).into_owned();
            pending.drain(..n);
            out
        }
        Err(_) => {
            let out = String::from_utf8_lossy(pending).into_owned();
            pending.clear();
            out
        }
    }
}

/// Holds back text that might be the start of a stop string.
#[derive(Debug, Default)]
pub struct StopFilter {
    stops: Vec<String>,
    held: String,
}

/// What [`StopFilter::push`] decided.
#[derive(Debug, PartialEq, Eq)]
pub enum StopOutcome {
    /// Text safe to send now (may be empty).
    Continue(String),
    /// A stop string matched: send this text (everything before the stop) and finish.
    Stopped(String),
}

impl StopFilter {
    /// Filter for these stop strings (empty strings are ignored).
    pub fn new(stops: Vec<String>) -> Self {
        Self { stops: stops.into_iter().filter(|s| !s.is_empty()).collect(), held: String::new() }
    }

    /// Feed new text.
    pub fn push(&mut self, text: &str) -> StopOutcome {
        self.held.push_str(text);
        if self.stops.is_empty() {
            return StopOutcome::Continue(std::mem::take(&mut self.held));
        }
        let first = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min();
        if let Some(at) = first {
            let out = self.held[..at].to_owned();
            self.held.clear();
            return StopOutcome::Stopped(out);
        }
        // Keep the longest suffix that is a proper prefix of some stop string.
        let mut keep = 0;
        for s in &self.stops {
            for (i, _) in s.char_indices().skip(1) {
                if self.held.ends_with(&s[..i]) {
                    keep = keep.max(i);
                }
            }
        }
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_owned();
        self.held.drain(..cut);
        StopOutcome::Continue(out)
    }

    /// Generation ended without a stop: release what was held.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_utf8_is_held_until_complete() {
        let mut p = Vec::new();
        let bytes = "好".as_bytes();
        assert_eq!(take_utf8(&mut p, &bytes[..1]), "");
        assert_eq!(take_utf8(&mut p, &bytes[1..2]), "");
        assert_eq!(take_utf8(&mut p, &bytes[2..]), "好");
        assert_eq!(take_utf8(&mut p, b"ok \xff!"), "ok \u{fffd}!");
        assert!(p.is_empty());
    }

    #[test]
    fn stop_strings_split_across_pieces() {
        let mut f = StopFilter::new(vec!["\n\nUser:".into(), "END".into()]);
        assert_eq!(f.push("Hello"), StopOutcome::Continue("Hello".into()));
        assert_eq!(f.push(" world\n"), StopOutcome::Continue(" world".into()));
        assert_eq!(f.push("\nUs"), StopOutcome::Continue(String::new()));
        assert_eq!(f.push("er: hi"), StopOutcome::Stopped(String::new()));
        let mut f = StopFilter::new(vec!["END".into()]);
        assert_eq!(f.push("a E"), StopOutcome::Continue("a ".into()));
        assert_eq!(f.push("x"), StopOutcome::Continue("Ex".into()));
        assert_eq!(f.push("yEN"), StopOutcome::Continue("y".into()));
        assert_eq!(f.finish(), "EN");
        let mut f = StopFilter::new(vec!["ab".into()]);
        assert_eq!(f.push("xxaby"), StopOutcome::Stopped("xx".into()));
    }
}
