//! Channel patterns of tokens: `*` matches any run of characters (including `:`), and a pattern
//! matches the whole name.

/// One glob pattern, split at its stars once so that matching allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    /// The literal pieces between stars; `parts.len() == stars + 1`.
    parts: Vec<String>,
}

impl Pattern {
    pub fn new(pattern: &str) -> Self {
        Pattern {
            parts: pattern.split('*').map(str::to_owned).collect(),
        }
    }

    pub fn matches(&self, name: &str) -> bool {
        let (first, rest) = match self.parts.split_first() {
            Some(split) => split,
            None => return false,
        };
        if rest.is_empty() {
            return first == name;
        }
        let Some(mut tail) = name.strip_prefix(first.as_str()) else {
            return false;
        };
        let (last, middle) = match rest.split_last() {
            Some(split) => split,
            None => return false,
        };
        for part in middle {
            match tail.find(part.as_str()) {
                Some(at) => tail = &tail[at + part.len()..],
                None => return false,
            }
        }
        tail.len() >= last.len() && tail.ends_with(last.as_str())
    }
}

/// Whether any of `patterns` matches `name`.
pub fn any_match(patterns: &[Pattern], name: &str) -> bool {
    patterns.iter().any(|p| p.matches(name))
}

#[cfg(test)]
mod tests {
    use super::Pattern;

    fn m(p: &str, n: &str) -> bool {
        Pattern::new(p).matches(n)
    }

    #[test]
    fn star_matches_any_run_including_colons() {
        assert!(m("chat:*", "chat:lobby"));
        assert!(m("chat:*", "chat:a:b"));
        assert!(m("chat:*", "chat:"));
        assert!(m("*", "anything:at/all"));
        assert!(m("a*b*c", "aXXbYYc"));
        assert!(m("a*b*c", "abc"));
    }

    #[test]
    fn patterns_are_anchored() {
        assert!(!m("chat:*", "xchat:lobby"));
        assert!(!m("chat", "chat:lobby"));
        assert!(!m("*:lobby", "chat:lobby2"));
        assert!(!m("a*a", "a"));
        assert!(m("chat:lobby", "chat:lobby"));
    }
}
