//! Client id globs: `*` is any run of characters (possibly none), `?` one character.

/// A compiled glob; a text without `*` or `?` is compared as is.
#[derive(Debug, Clone)]
pub struct Glob {
    pattern: Box<[char]>,
    literal: Option<Box<str>>,
}

impl Glob {
    pub fn new(pattern: &str) -> Self {
        let literal = (!pattern.contains(['*', '?'])).then(|| pattern.into());
        Self {
            pattern: pattern.chars().collect(),
            literal,
        }
    }

    /// The text, when the glob has no wildcard.
    pub fn literal(&self) -> Option<&str> {
        self.literal.as_deref()
    }

    /// Whether `text` matches (greedy, with one backtrack point).
    pub fn matches(&self, text: &str) -> bool {
        if let Some(l) = &self.literal {
            return **l == *text;
        }
        let p = &self.pattern;
        let t: Vec<char> = text.chars().collect();
        let (mut pi, mut ti) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while ti < t.len() {
            if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
                pi += 1;
                ti += 1;
            } else if pi < p.len() && p[pi] == '*' {
                star = Some((pi, ti));
                pi += 1;
            } else if let Some((sp, st)) = star {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            } else {
                return false;
            }
        }
        p[pi..].iter().all(|c| *c == '*')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases = [
            ("sensor-*", "sensor-1", true),
            ("sensor-*", "sensor-", true),
            ("sensor-*", "sensor", false),
            ("*-gw", "a-b-gw", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*", "", true),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("é*", "éa", true),
        ];
        for (p, t, want) in cases {
            assert_eq!(Glob::new(p).matches(t), want, "{p} ~ {t}");
        }
    }
}
