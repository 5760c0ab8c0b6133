//! Statement fingerprints and the relations a statement names, for events
//! of unrestricted roles (restricted ones carry what the analyzer found).
//!
//! A fingerprint is the text with string, number and dollar-quoted
//! constants replaced by `?`, comments dropped and whitespace collapsed:
//! `SELECT * FROM t WHERE id = 42` and `… id = 7` share one, so a
//! compliance officer can group "the same query" however it was filled in.
//! Relations come from parsing, which is costly, so they are cached by
//! fingerprint and computed on the audit writer thread, off the relay.
//! A prepared statement is fingerprinted once, when the session sees it
//! parsed, and each Execute's event carries that; the writer fingerprints
//! the rest (simple-protocol queries).

use std::num::NonZeroUsize;

use lru::LruCache;
use sqlparser::ast::Visit;

/// `text` with its constants replaced by `?`.
pub fn fingerprint(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len().min(4096));
    let mut i = 0;
    let mut space = false;
    let push = |out: &mut String, s: &str, space: &mut bool| {
        if *space && !out.is_empty() {
            out.push(' ');
        }
        *space = false;
        out.push_str(s);
    };
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                space = true;
                i += 1;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                space = true;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0usize;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                space = true;
            }
            b'\'' => {
                // E'…' keeps its prefix letter out: it was pushed as a word.
                let escapes = out.ends_with(['E', 'e']) && !space;
                if escapes {
                    out.pop();
                }
                i += 1;
                while i < b.len() {
                    if escapes && b[i] == b'\\' {
                        i += 2;
                        continue;
                    }
                    if b[i] == b'\'' {
                        if b.get(i + 1) == Some(&b'\'') {
                            i += 2;
                            continue;
                        }
                        i += 1;
                        break;
                    }
                    i += 1;
                }
                push(&mut out, "?", &mut space);
            }
            b'"' => {
                let start = i;
                i += 1;
                while i < b.len() {
                    if b[i] == b'"' {
                        if b.get(i + 1) == Some(&b'"') {
                            i += 2;
                            continue;
                        }
                        i += 1;
                        break;
                    }
                    i += 1;
                }
                push(&mut out, &text[start..i.min(b.len())], &mut space);
            }
            b'$' if b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let start = i;
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                push(&mut out, &text[start..i], &mut space);
            }
            b'$' if dollar_tag(&b[i..]).is_some() => {
                let tag_len = dollar_tag(&b[i..]).unwrap_or(1);
                let tag = &b[i..i + tag_len];
                i += tag_len;
                while i < b.len() && !b[i..].starts_with(tag) {
                    i += 1;
                }
                i = (i + tag_len).min(b.len());
                push(&mut out, "?", &mut space);
            }
            b'0'..=b'9' => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_')
                {
                    i += 1;
                }
                push(&mut out, "?", &mut space);
            }
            _ if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                let start = i;
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric()
                        || b[i] == b'_'
                        || b[i] == b'$'
                        || b[i] >= 0x80)
                {
                    i += 1;
                }
                push(&mut out, &text[start..i], &mut space);
            }
            _ => {
                let len = utf8_len(c);
                let end = (i + len).min(b.len());
                push(&mut out, text.get(i..end).unwrap_or("?"), &mut space);
                i = end;
            }
        }
    }
    out
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xF0..=0xFF => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

/// Length of a dollar-quote tag (`$$`, `$tag$`) at the start of `b`.
fn dollar_tag(b: &[u8]) -> Option<usize> {
    let end = b[1..].iter().position(|&c| c == b'$')? + 2;
    let inner = &b[1..end - 1];
    let ok = inner
        .iter()
        .enumerate()
        .all(|(k, &c)| c.is_ascii_alphabetic() || c == b'_' || (k > 0 && c.is_ascii_digit()));
    ok.then_some(end)
}

/// Relation names per fingerprint, parsed once.
pub struct Relations {
    cache: LruCache<String, Vec<String>>,
}

impl Default for Relations {
    fn default() -> Self {
        Relations {
            cache: LruCache::new(NonZeroUsize::new(4096).unwrap_or(NonZeroUsize::MIN)),
        }
    }
}

impl Relations {
    /// The relations `text` names (as written, lowercased unless quoted);
    /// empty when it does not parse.
    pub fn of(&mut self, fingerprint: &str, text: &str) -> Vec<String> {
        if let Some(found) = self.cache.get(fingerprint) {
            return found.clone();
        }
        let mut found = Vec::new();
        if let Ok(statements) = crate::sql::parse::parse(text) {
            let _ = statements.visit(&mut Collect(&mut found));
        }
        found.sort();
        found.dedup();
        self.cache.put(fingerprint.to_string(), found.clone());
        found
    }
}

struct Collect<'a>(&'a mut Vec<String>);

impl sqlparser::ast::Visitor for Collect<'_> {
    type Break = ();
    fn pre_visit_relation(
        &mut self,
        relation: &sqlparser::ast::ObjectName,
    ) -> std::ops::ControlFlow<()> {
        let name: Vec<String> = relation
            .0
            .iter()
            .map(|p| match p.as_ident() {
                Some(i) if i.quote_style.is_some() => i.value.clone(),
                Some(i) => i.value.to_ascii_lowercase(),
                None => p.to_string(),
            })
            .collect();
        self.0.push(name.join("."));
        std::ops::ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_become_placeholders() {
        assert_eq!(
            fingerprint(
                "SELECT *\n FROM t  WHERE id = 42 AND name = 'O''Brien' -- hi\n AND x = E'a\\'b'"
            ),
            "SELECT * FROM t WHERE id = ? AND name = ? AND x = ?"
        );
        assert_eq!(
            fingerprint("select $q$ ' $q$, $1, \"Col 1\" /* c /* nested */ */ from t1"),
            "select ?, $1, \"Col 1\" from t1"
        );
        assert_eq!(fingerprint("SELECT 1.5e3, 'é'"), "SELECT ?, ?");
    }

    #[test]
    fn relations_are_found_and_cached_by_fingerprint() {
        let mut r = Relations::default();
        let text = "SELECT * FROM public.patients p JOIN Visits v ON v.id = p.id WHERE p.id = 3";
        let fp = fingerprint(text);
        assert_eq!(r.of(&fp, text), vec!["public.patients", "visits"]);
        assert_eq!(r.of(&fp, "not even sql"), vec!["public.patients", "visits"]);
        assert!(r.of("x", "this is not sql").is_empty());
    }
}
