//! Patterns as written in a policy (`Resource`, `StringLike` values, action names) and the two
//! matchers over them.
//!
//! A [`Pattern`] is the parsed policy text: literal text, the wildcards `*` and `?`, and policy
//! variables `${...}`. Resolving it against [`Variables`] gives a flat list of [`Elem`]s in
//! which every substituted value is literal text, so a client id of `*` can never act as a
//! wildcard. That list is matched either by [`naive_match`] (a textbook dynamic programme, used
//! by the uncompiled evaluator and as the reference in tests) or, after compilation, by
//! [`FastGlob`] (anchored prefix/suffix and greedy leftmost search, no allocation per call).
//! [`derive`] removes a known leading text (the `arn:aws:iot:<region>:<account>:` part) from a
//! pattern at compile time, so the hot path matches only what varies.

use std::borrow::Cow;

use crate::variables::{Resolved, VarRef, Variables};

/// One piece of a parsed pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Part {
    /// Literal text.
    Text(String),
    /// `*`: any run of characters, `/` included.
    Star,
    /// `?`: exactly one character.
    One,
    /// A policy variable; `raw` is the whole `${...}` text, kept when it does not resolve.
    Var { var: VarRef, raw: String },
}

/// A parsed policy pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pattern {
    parts: Vec<Part>,
}

impl Pattern {
    /// Parses `text`. With `variables` false (policy Version 2008-10-17) `${` is plain text.
    pub(crate) fn parse(text: &str, variables: bool) -> Pattern {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            if variables
                && rest.starts_with("${")
                && let Some(close) = rest.find('}')
            {
                // `close` >= 2: the `}` cannot be one of the first two bytes.
                let inner = rest.get(2..close).unwrap_or_default();
                match inner {
                    "*" => lit.push('*'),
                    "?" => lit.push('?'),
                    "$" => lit.push('$'),
                    _ => {
                        flush(&mut lit, &mut parts);
                        parts.push(Part::Var {
                            var: VarRef::parse(inner),
                            raw: rest.get(..=close).unwrap_or_default().to_owned(),
                        });
                    }
                }
                rest = rest.get(close + 1..).unwrap_or_default();
                continue;
            }
            match c {
                '*' => {
                    flush(&mut lit, &mut parts);
                    parts.push(Part::Star);
                }
                '?' => {
                    flush(&mut lit, &mut parts);
                    parts.push(Part::One);
                }
                _ => lit.push(c),
            }
            rest = &rest[c.len_utf8()..];
        }
        flush(&mut lit, &mut parts);
        Pattern { parts }
    }

    /// Whether the pattern contains a policy variable.
    pub(crate) fn has_variables(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Var { .. }))
    }

    /// The pattern as a glob with variables substituted as literal text (an unresolvable
    /// variable stays as its literal `${...}` text). Consecutive `*` are merged.
    pub(crate) fn resolve(&self, vars: &Variables) -> Vec<Elem> {
        let mut out = Vec::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.extend(t.chars().map(Elem::Char)),
                Part::Star => {
                    if out.last() != Some(&Elem::Star) {
                        out.push(Elem::Star);
                    }
                }
                Part::One => out.push(Elem::One),
                Part::Var { var, raw } => {
                    let value = single_value(var, vars, raw);
                    out.extend(value.chars().map(Elem::Char));
                }
            }
        }
        out
    }

    /// The pattern as plain text with variables substituted; `*` and `?` are kept as the
    /// characters themselves (for `StringEquals` and friends, where they are not wildcards).
    pub(crate) fn resolve_text(&self, vars: &Variables) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Star => out.push('*'),
                Part::One => out.push('?'),
                Part::Var { var, raw } => out.push_str(&single_value(var, vars, raw)),
            }
        }
        out
    }
}

/// The value of a variable used inside a pattern: one value, or the literal `raw` text.
fn single_value<'a>(var: &VarRef, vars: &'a Variables, raw: &'a str) -> Cow<'a, str> {
    match var.resolve(vars) {
        Resolved::One(v) => v,
        Resolved::Absent | Resolved::Many(_) => Cow::Borrowed(raw),
    }
}

fn flush(lit: &mut String, parts: &mut Vec<Part>) {
    if !lit.is_empty() {
        parts.push(Part::Text(std::mem::take(lit)));
    }
}

/// One element of a resolved glob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Elem {
    /// This character, literally.
    Char(char),
    /// Exactly one character.
    One,
    /// Any run of characters (possibly empty).
    Star,
}

/// A glob from plain text where `*` and `?` are wildcards (action names), optionally
/// lower-cased.
pub(crate) fn glob_from_text(text: &str, lowercase: bool) -> Vec<Elem> {
    let mut out = Vec::new();
    let push = |e: Elem, out: &mut Vec<Elem>| {
        if !(e == Elem::Star && out.last() == Some(&Elem::Star)) {
            out.push(e);
        }
    };
    for c in text.chars() {
        match c {
            '*' => push(Elem::Star, &mut out),
            '?' => push(Elem::One, &mut out),
            _ if lowercase => {
                for l in c.to_lowercase() {
                    push(Elem::Char(l), &mut out);
                }
            }
            _ => push(Elem::Char(c), &mut out),
        }
    }
    out
}

/// Whether `pattern` matches all of `text`. The reference matcher: a dynamic programme over
/// characters, O(pattern × text), allocating one row per pattern element.
pub(crate) fn naive_match(pattern: &[Elem], text: &str) -> bool {
    let chars: Vec<char> = text.chars().collect();
    let n = chars.len();
    // row[j]: the pattern elements seen so far match the first j characters.
    let mut row = vec![false; n + 1];
    row[0] = true;
    for elem in pattern {
        let mut next = vec![false; n + 1];
        for j in 0..=n {
            next[j] = match elem {
                Elem::Star => row[j] || (j > 0 && next[j - 1]),
                Elem::One => j > 0 && row[j - 1],
                Elem::Char(c) => j > 0 && row[j - 1] && chars[j - 1] == *c,
            };
        }
        row = next;
    }
    row[n]
}

/// The states of `pattern` reachable after reading `prefix`: each index `i` means "the rest
/// of the text must match `pattern[i..]`". Redundant states (the one right after a `*` that
/// is itself a state) are dropped.
pub(crate) fn derive(pattern: &[Elem], prefix: &str) -> Vec<usize> {
    let mut states = closure(pattern, vec![0]);
    for c in prefix.chars() {
        let mut next = Vec::new();
        for &i in &states {
            match pattern.get(i) {
                Some(Elem::Char(d)) if *d == c => next.push(i + 1),
                Some(Elem::One) => next.push(i + 1),
                Some(Elem::Star) => next.push(i),
                _ => {}
            }
        }
        states = closure(pattern, next);
        if states.is_empty() {
            break;
        }
    }
    // `*rest` already covers `rest`.
    let stars: Vec<usize> = states
        .iter()
        .copied()
        .filter(|&i| pattern.get(i) == Some(&Elem::Star))
        .collect();
    states.retain(|i| !stars.iter().any(|s| s + 1 == *i));
    states
}

fn closure(pattern: &[Elem], mut states: Vec<usize>) -> Vec<usize> {
    let mut k = 0;
    while k < states.len() {
        let i = states[k];
        if pattern.get(i) == Some(&Elem::Star) {
            states.push(i + 1);
        }
        k += 1;
    }
    states.sort_unstable();
    states.dedup();
    states
}

/// A run of literal text and single-character wildcards between two `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Lit(Box<str>),
    /// This many characters, whatever they are.
    Any(usize),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Segment {
    pieces: Vec<Piece>,
}

impl Segment {
    /// Matches the segment starting at byte `at`; the end offset on success.
    fn match_forward(&self, text: &str, at: usize) -> Option<usize> {
        let mut pos = at;
        for piece in &self.pieces {
            match piece {
                Piece::Lit(lit) => {
                    if !text.get(pos..)?.starts_with(&**lit) {
                        return None;
                    }
                    pos += lit.len();
                }
                Piece::Any(n) => {
                    for _ in 0..*n {
                        let c = text.get(pos..)?.chars().next()?;
                        pos += c.len_utf8();
                    }
                }
            }
        }
        Some(pos)
    }

    /// Matches the segment ending at byte `end`; the start offset on success.
    fn match_backward(&self, text: &str, end: usize) -> Option<usize> {
        let mut pos = end;
        for piece in self.pieces.iter().rev() {
            match piece {
                Piece::Lit(lit) => {
                    if !text.get(..pos)?.ends_with(&**lit) {
                        return None;
                    }
                    pos -= lit.len();
                }
                Piece::Any(n) => {
                    for _ in 0..*n {
                        let c = text.get(..pos)?.chars().next_back()?;
                        pos -= c.len_utf8();
                    }
                }
            }
        }
        Some(pos)
    }

    /// The leftmost match starting at or after `from` and ending at or before `limit`; its
    /// end offset.
    fn find(&self, text: &str, from: usize, limit: usize) -> Option<usize> {
        let hay = text.get(..limit)?;
        let mut start = from;
        loop {
            if let Some(Piece::Lit(lit)) = self.pieces.first() {
                start += hay.get(start..)?.find(&**lit)?;
            }
            if let Some(end) = self.match_forward(hay, start) {
                return Some(end);
            }
            let c = hay.get(start..)?.chars().next()?;
            start += c.len_utf8();
        }
    }
}

/// A compiled glob: `seg0 * seg1 * ... * segN`. Matching allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FastGlob {
    /// One more than the number of `*`.
    segments: Vec<Segment>,
}

impl FastGlob {
    /// Compiles a resolved glob.
    pub(crate) fn new(pattern: &[Elem]) -> FastGlob {
        let mut segments = vec![Segment::default()];
        let mut lit = String::new();
        for elem in pattern {
            let Some(seg) = segments.last_mut() else {
                break;
            };
            match elem {
                Elem::Char(c) => lit.push(*c),
                Elem::One => {
                    if !lit.is_empty() {
                        seg.pieces.push(Piece::Lit(std::mem::take(&mut lit).into()));
                    }
                    match seg.pieces.last_mut() {
                        Some(Piece::Any(n)) => *n += 1,
                        _ => seg.pieces.push(Piece::Any(1)),
                    }
                }
                Elem::Star => {
                    if !lit.is_empty() {
                        seg.pieces.push(Piece::Lit(std::mem::take(&mut lit).into()));
                    }
                    segments.push(Segment::default());
                }
            }
        }
        if !lit.is_empty()
            && let Some(seg) = segments.last_mut()
        {
            seg.pieces.push(Piece::Lit(lit.into()));
        }
        FastGlob { segments }
    }

    /// Whether the glob matches all of `text`.
    pub(crate) fn matches(&self, text: &str) -> bool {
        match self.segments.as_slice() {
            [] => text.is_empty(),
            [only] => only.match_forward(text, 0) == Some(text.len()),
            [first, middle @ .., last] => {
                let Some(mut pos) = first.match_forward(text, 0) else {
                    return false;
                };
                let Some(tail) = last.match_backward(text, text.len()) else {
                    return false;
                };
                if tail < pos {
                    return false;
                }
                for seg in middle {
                    match seg.find(text, pos, tail) {
                        Some(end) => pos = end,
                        None => return false,
                    }
                }
                true
            }
        }
    }

    /// Whether the glob is a lone `*`.
    pub(crate) fn is_match_all(&self) -> bool {
        self.segments.len() == 2 && self.segments.iter().all(|s| s.pieces.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn text_strategy(
        alphabet: &'static [&'static str],
        max: usize,
    ) -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(alphabet), 0..max).prop_map(|v| v.concat())
    }

    const PAT: &[&str] = &["a", "b", "/", "*", "?", "é", "ab"];
    const TXT: &[&str] = &["a", "b", "/", "é", "ab", "ba"];

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

        #[test]
        fn fast_glob_equals_naive(p in text_strategy(PAT, 8), t in text_strategy(TXT, 10)) {
            let elems = glob_from_text(&p, false);
            prop_assert_eq!(FastGlob::new(&elems).matches(&t), naive_match(&elems, &t), "{} vs {}", p, t);
        }

        #[test]
        fn derive_preserves_matching(
            p in text_strategy(PAT, 8),
            prefix in text_strategy(TXT, 5),
            t in text_strategy(TXT, 6),
        ) {
            let elems = glob_from_text(&p, false);
            let whole = naive_match(&elems, &format!("{prefix}{t}"));
            let states = derive(&elems, &prefix);
            let by_residual = states.iter().any(|&i| naive_match(&elems[i..], &t));
            prop_assert_eq!(whole, by_residual, "{} on {} + {}", p, prefix, t);
        }
    }

    fn g(s: &str) -> Vec<Elem> {
        glob_from_text(s, false)
    }

    #[test]
    fn naive_and_fast_agree_on_examples() {
        let cases = [
            ("a*", "a/b/c", true),
            ("a/?", "a/b", true),
            ("a/?", "a/bc", false),
            ("*", "", true),
            ("", "", true),
            ("", "x", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "acb", false),
            ("*ab", "aab", true),
            ("a?*?b", "aé€b", true),
            ("a?*?b", "aéb", false),
            ("*é*", "xéy", true),
            ("?", "é", true),
            ("a*a", "a", false),
            ("*a*a*", "aa", true),
        ];
        for (p, t, want) in cases {
            assert_eq!(naive_match(&g(p), t), want, "naive {p} {t}");
            assert_eq!(FastGlob::new(&g(p)).matches(t), want, "fast {p} {t}");
        }
    }

    #[test]
    fn fixed_value_escapes_are_literal() {
        let p = Pattern::parse("a${*}b${?}${$}", true);
        let vars = Variables::default();
        let elems = p.resolve(&vars);
        assert!(naive_match(&elems, "a*b?$"));
        assert!(!naive_match(&elems, "axb?$"));
        // 2008-10-17: no variables at all.
        let p = Pattern::parse("a${*}", false);
        assert!(naive_match(&p.resolve(&vars), "a${xyz}"));
    }

    #[test]
    fn unterminated_variable_is_text() {
        let p = Pattern::parse("a${iot:ClientId", true);
        assert!(!p.has_variables());
        assert!(naive_match(
            &p.resolve(&Variables::default()),
            "a${iot:ClientId"
        ));
    }

    #[test]
    fn derive_strips_a_prefix() {
        let pat = g("arn:*:topic/a*");
        let states = derive(&pat, "arn:aws:iot:r:1:");
        let residuals: Vec<Vec<Elem>> = states.iter().map(|&i| pat[i..].to_vec()).collect();
        let m = |t: &str| residuals.iter().any(|r| naive_match(r, t));
        assert!(m("topic/abc"));
        assert!(!m("topicfilter/abc"));
        assert!(m("x:topic/a"));
    }
}
