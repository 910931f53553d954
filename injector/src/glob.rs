//! POSIX `path.Match`-style globs (`*`, `?`, `[...]`), as Dapr matches service accounts.

/// Whether `name` matches `pattern`. `*` matches any run of characters, `?` one character,
/// `[abc]`, `[a-z]` and `[^a-z]` (or `[!a-z]`) a character class. A malformed class never
/// matches.
pub fn matches(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    match_from(&p, &n)
}

fn match_from(p: &[char], n: &[char]) -> bool {
    match p.first() {
        None => n.is_empty(),
        Some('*') => (0..=n.len()).any(|skip| match_from(&p[1..], &n[skip..])),
        Some('?') => !n.is_empty() && match_from(&p[1..], &n[1..]),
        Some('[') => {
            let Some(c) = n.first() else {
                return false;
            };
            match class(&p[1..], *c) {
                Some((true, rest)) => match_from(rest, &n[1..]),
                _ => false,
            }
        }
        Some(pc) => n.first() == Some(pc) && match_from(&p[1..], &n[1..]),
    }
}

/// Matches `c` against the class starting after `[`; returns whether it matched and the pattern
/// after `]`, or `None` if the class is not closed.
fn class(p: &[char], c: char) -> Option<(bool, &[char])> {
    let (negated, mut i) = match p.first() {
        Some('^' | '!') => (true, 1),
        _ => (false, 0),
    };
    let mut matched = false;
    let mut first = true;
    while i < p.len() {
        if p[i] == ']' && !first {
            return Some((matched != negated, &p[i + 1..]));
        }
        first = false;
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            matched |= (p[i]..=p[i + 2]).contains(&c);
            i += 3;
        } else {
            matched |= p[i] == c;
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn globs() {
        let cases = [
            ("proj-*", "proj-alpha", true),
            ("sa-*", "sa-runner", true),
            ("staging-?", "staging-A", true),
            ("staging-?", "staging-AB", false),
            ("kube-system", "kube-system", true),
            ("kube-system", "kube-systems", false),
            ("*", "", true),
            ("[a-c]x", "bx", true),
            ("[a-c]x", "dx", false),
            ("[^a-c]x", "dx", true),
            ("[!a-c]x", "ax", false),
            ("[abc", "a", false),
        ];
        for (pattern, name, want) in cases {
            assert_eq!(matches(pattern, name), want, "{pattern} vs {name}");
        }
    }
}
