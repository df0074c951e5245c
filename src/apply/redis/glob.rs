//! Redis's glob matching (`stringmatchlen` of Redis's `util.c`), so that one `SCAN` pass can serve
//! every pattern delete of a unit: keys are matched here against each pattern exactly as
//! `SCAN MATCH` would match them.

/// True when `key` matches the Redis glob `pattern` (`*`, `?`, `[...]`, `[^...]`, `[a-z]`, `\x`).
pub fn matches(pattern: &[u8], key: &[u8]) -> bool {
    let mut skip_longer = false;
    match_from(pattern, key, &mut skip_longer)
}

fn match_from(mut p: &[u8], mut s: &[u8], skip_longer: &mut bool) -> bool {
    while !p.is_empty() && !s.is_empty() {
        match p[0] {
            b'*' => {
                while p.len() > 1 && p[1] == b'*' {
                    p = &p[1..];
                }
                if p.len() == 1 {
                    return true;
                }
                while !s.is_empty() {
                    if match_from(&p[1..], s, skip_longer) {
                        return true;
                    }
                    if *skip_longer {
                        return false;
                    }
                    s = &s[1..];
                }
                // No match for the rest of the pattern here: none with a longer prefix either.
                *skip_longer = true;
                return false;
            }
            b'?' => s = &s[1..],
            b'[' => {
                let Some((matched, rest)) = class(&p[1..], s[0]) else {
                    return false;
                };
                if !matched {
                    return false;
                }
                s = &s[1..];
                // `rest` starts at the class's `]` (or is what was left of an unclosed one).
                p = rest;
            }
            b'\\' if p.len() >= 2 => {
                if p[1] != s[0] {
                    return false;
                }
                p = &p[1..];
                s = &s[1..];
            }
            c => {
                if c != s[0] {
                    return false;
                }
                s = &s[1..];
            }
        }
        p = &p[1..];
        if s.is_empty() {
            while p.first() == Some(&b'*') {
                p = &p[1..];
            }
            break;
        }
    }
    p.is_empty() && s.is_empty()
}

/// Matches `c` against the class that `p` starts (after its `[`). Returns whether it matched and
/// the pattern from the class's closing `]` on (so that the caller steps past it).
fn class(mut p: &[u8], c: u8) -> Option<(bool, &[u8])> {
    let not = p.first() == Some(&b'^');
    if not {
        p = &p[1..];
    }
    let mut matched = false;
    loop {
        match p {
            [b'\\', x, ..] => {
                if *x == c {
                    matched = true;
                }
                p = &p[1..];
            }
            [b']', ..] => break,
            // An unclosed class: Redis steps back onto its last character.
            [] => return Some((matched != not, b"]")),
            [start, b'-', end, ..] => {
                let (lo, hi) = if start <= end {
                    (*start, *end)
                } else {
                    (*end, *start)
                };
                if (lo..=hi).contains(&c) {
                    matched = true;
                }
                p = &p[2..];
            }
            [x, ..] => {
                if *x == c {
                    matched = true;
                }
            }
        }
        p = &p[1..];
    }
    Some((matched != not, p))
}

/// The literal text every key matching `pattern` starts with (escapes resolved), up to its first
/// wildcard.
pub fn literal_prefix(pattern: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < pattern.len() {
        match pattern[i] {
            b'*' | b'?' | b'[' => break,
            b'\\' if i + 1 < pattern.len() => {
                out.push(pattern[i + 1]);
                i += 2;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_as_redis_does() {
        let cases: &[(&str, &str, bool)] = &[
            ("*", "anything", true),
            ("a*", "a", true),
            ("a*", "ba", false),
            (
                "shop:category:shoes:page:*",
                "shop:category:shoes:page:12",
                true,
            ),
            (
                "shop:category:shoes:page:*",
                "shop:category:shoes-2:page:1",
                false,
            ),
            ("h?llo", "hello", true),
            ("h?llo", "hllo", false),
            ("h[ae]llo", "hallo", true),
            ("h[ae]llo", "hillo", false),
            ("h[^e]llo", "hallo", true),
            ("h[^e]llo", "hello", false),
            ("h[a-b]llo", "hbllo", true),
            ("h[b-a]llo", "hallo", true),
            ("h[a-b]llo", "hcllo", false),
            (r"a\*b", "a*b", true),
            (r"a\*b", "axb", false),
            (r"cat:sh\[o\]es:*", "cat:sh[o]es:1", true),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("**", "x", true),
            ("a[", "a[", false),
        ];
        for (p, k, want) in cases {
            assert_eq!(matches(p.as_bytes(), k.as_bytes()), *want, "{p} ~ {k}");
        }
    }

    #[test]
    fn literal_prefix_stops_at_the_first_wildcard() {
        assert_eq!(literal_prefix(b"shop:cat:*:page:*"), b"shop:cat:");
        assert_eq!(literal_prefix(br"a\*b?c"), b"a*b");
        assert_eq!(literal_prefix(b"*x"), b"");
    }
}
