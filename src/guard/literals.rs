//! Statement shapes: the same query with different constants is analyzed
//! once.
//!
//! Applications and psql send `SELECT … WHERE aid = 48213` with a new
//! number each time; caching by exact text would analyze every one. For
//! simple queries, [`normalize`] replaces each plain literal by a numbered
//! placeholder (`$1`, `$2`, …); the shape is analyzed and cached, and
//! [`fill`] puts the original literal text back where each placeholder
//! landed in the rewritten SQL.
//!
//! This is safe because a placeholder and a plain literal are both single
//! value tokens: a shape the analyzer allows is allowed whatever value
//! fills each placeholder, and the database reads the filled text with the
//! literal exactly where the analyzer saw a value. The one decision that
//! reads a literal — `set_config('jit', …)`, allowed only for a literal
//! setting name — refuses the shape (`set_config($1, …)`), and a refused
//! shape falls back to analyzing the text itself. The lexer is deliberately narrow
//! — anything it is not sure about (comments, `$`, prefixed strings such as
//! `E'…'`, several statements, statements other than SELECT/WITH/VALUES)
//! means "no shape", and the text is analyzed as it is.

/// The shape of `sql` and its literals, in placeholder order.
pub fn normalize(sql: &str) -> Option<(String, Vec<&str>)> {
    let first = sql.trim_start();
    let head: String = first
        .chars()
        .take(6)
        .collect::<String>()
        .to_ascii_lowercase();
    if !(head.starts_with("select") || head.starts_with("with") || head.starts_with("values")) {
        return None;
    }
    let b = sql.as_bytes();
    let mut shape = String::with_capacity(sql.len() + 8);
    let mut literals = Vec::new();
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            // One statement only; a final `;` is fine.
            b';' if b[i + 1..].iter().all(u8::is_ascii_whitespace) => break,
            b'$' | b';' | b'\\' => return None,
            b'-' if b.get(i + 1) == Some(&b'-') => return None,
            b'/' if b.get(i + 1) == Some(&b'*') => return None,
            b'"' => i = skip_quoted(b, i, b'"')?,
            b'\'' => {
                // A prefix (E'', B'', X'', N'', U&'') changes how PostgreSQL
                // reads the string.
                if i > 0 && (is_ident(b[i - 1]) || b[i - 1] == b'&' || b[i - 1] == b'\'') {
                    return None;
                }
                let end = skip_quoted(b, i, b'\'')?;
                // `'a'\n'b'` is one string to PostgreSQL.
                let next = b[end..].iter().find(|c| !c.is_ascii_whitespace());
                if next == Some(&b'\'') {
                    return None;
                }
                push(&mut shape, &mut literals, sql, copied, i, end);
                copied = end;
                i = end;
            }
            b'0'..=b'9' | b'.' if starts_number(b, i) => {
                let end = number_end(b, i)?;
                push(&mut shape, &mut literals, sql, copied, i, end);
                copied = end;
                i = end;
            }
            c if is_ident(c) => {
                while i < b.len() && is_ident(b[i]) {
                    i += 1;
                }
                // `$` inside an identifier is caught above.
            }
            _ => i += 1,
        }
    }
    if literals.is_empty() {
        return None;
    }
    shape.push_str(&sql[copied..]);
    Some((shape, literals))
}

fn push<'a>(
    shape: &mut String,
    literals: &mut Vec<&'a str>,
    sql: &'a str,
    copied: usize,
    start: usize,
    end: usize,
) {
    shape.push_str(&sql[copied..start]);
    literals.push(&sql[start..end]);
    shape.push('$');
    shape.push_str(&literals.len().to_string());
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80
}

/// Index just past the closing quote; doubled quotes are escapes.
fn skip_quoted(b: &[u8], start: usize, quote: u8) -> Option<usize> {
    let mut i = start + 1;
    loop {
        match b.get(i)? {
            &c if c == quote => {
                if b.get(i + 1) == Some(&quote) {
                    i += 2;
                } else {
                    return Some(i + 1);
                }
            }
            _ => i += 1,
        }
    }
}

/// A number starts here, not inside an identifier (`t1`) or after a dot
/// of a qualified name.
fn starts_number(b: &[u8], i: usize) -> bool {
    let prev_ok = i == 0 || !(is_ident(b[i - 1]) || b[i - 1] == b'.');
    let digit_next = b[i].is_ascii_digit() || b.get(i + 1).is_some_and(u8::is_ascii_digit);
    prev_ok && digit_next
}

/// End of `123`, `1.5`, `.5`, `1e-3`; `None` for anything PostgreSQL might
/// read otherwise (`1abc`, `0x1F`, `1_000`, `1..2`).
fn number_end(b: &[u8], start: usize) -> Option<usize> {
    let mut i = start;
    let digits = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
    };
    digits(&mut i);
    if b.get(i) == Some(&b'.') {
        i += 1;
        digits(&mut i);
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let before = i;
        digits(&mut i);
        if i == before {
            return None;
        }
    }
    match b.get(i) {
        Some(&c) if is_ident(c) || c == b'.' => None,
        _ => Some(i),
    }
}

/// `rewritten` with each placeholder `$n` replaced by `literals[n - 1]`;
/// `None` if the text holds anything unexpected.
pub fn fill(rewritten: &str, literals: &[&str]) -> Option<String> {
    let b = rewritten.as_bytes();
    let extra: usize = literals.iter().map(|l| l.len()).sum();
    let mut out = String::with_capacity(rewritten.len() + extra);
    let mut copied = 0;
    let mut i = 0;
    let mut used = vec![false; literals.len()];
    while i < b.len() {
        match b[i] {
            // E'…' (backslash escapes) is not read by this scanner.
            b'\'' if i > 0 && is_ident(b[i - 1]) => return None,
            b'\'' => i = skip_quoted(b, i, b'\'')?,
            b'"' => i = skip_quoted(b, i, b'"')?,
            b'$' => {
                let start = i;
                i += 1;
                let digits = i;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                let n: usize = rewritten[digits..i].parse().ok()?;
                let index = n.checked_sub(1)?;
                let literal = literals.get(index)?;
                // Each placeholder exactly once, as the analyzer saw it.
                if std::mem::replace(used.get_mut(index)?, true) {
                    return None;
                }
                out.push_str(&rewritten[copied..start]);
                out.push_str(literal);
                copied = i;
            }
            c if is_ident(c) => {
                while i < b.len() && (is_ident(b[i]) || b[i] == b'$') {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    if used.iter().any(|u| !u) {
        return None;
    }
    out.push_str(&rewritten[copied..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_become_placeholders_and_come_back() {
        let sql =
            "SELECT abalance FROM t1 WHERE aid = 48213 AND x = 'it''s' AND y > 1.5e3 AND z < .5";
        let (shape, lits) = normalize(sql).unwrap();
        assert_eq!(
            shape,
            "SELECT abalance FROM t1 WHERE aid = $1 AND x = $2 AND y > $3 AND z < $4"
        );
        assert_eq!(lits, ["48213", "'it''s'", "1.5e3", ".5"]);
        let rewritten = "SELECT abalance FROM (SELECT \"a$1\", '$2' FROM t WHERE b = '1') t1 WHERE aid = $1 AND x = $2 AND y > $3 AND z < $4";
        assert_eq!(
            fill(rewritten, &lits).unwrap(),
            "SELECT abalance FROM (SELECT \"a$1\", '$2' FROM t WHERE b = '1') t1 WHERE aid = 48213 AND x = 'it''s' AND y > 1.5e3 AND z < .5"
        );
    }

    #[test]
    fn anything_uncertain_has_no_shape() {
        for sql in [
            "SELECT 1; SELECT 2",
            "SELECT E'\\x' FROM t",
            "SELECT e'x'",
            "SELECT x'1F'",
            "SELECT U&'d\\0061t'",
            "SELECT $$x$$",
            "SELECT $1",
            "SELECT 1 -- c",
            "SELECT /* c */ 1",
            "SELECT 1abc",
            "SELECT 0x1F",
            "SELECT 1_000",
            "SELECT 'a' 'b'",
            "SELECT 'a'\n'b'",
            "SELECT 'unterminated",
            "SET x = 1",
            "EXPLAIN SELECT 1",
            "SELECT a FROM t",
        ] {
            assert!(normalize(sql).is_none(), "{sql}");
        }
    }

    #[test]
    fn identifiers_and_quoted_names_keep_their_digits() {
        let (shape, lits) = normalize("select t1.c2, \"9x\" from s3.t1 where c2 = 7").unwrap();
        assert_eq!(shape, "select t1.c2, \"9x\" from s3.t1 where c2 = $1");
        assert_eq!(lits, ["7"]);
        let (shape, _) = normalize("SELECT abalance FROM a WHERE aid = 1;\n").unwrap();
        assert_eq!(shape, "SELECT abalance FROM a WHERE aid = $1;\n");
    }

    #[test]
    fn fill_refuses_unknown_placeholders() {
        assert!(fill("SELECT $3", &["1"]).is_none());
        assert!(fill("SELECT $0", &["1"]).is_none());
        assert!(fill("SELECT $x", &["1"]).is_none());
        assert!(fill("SELECT $1, $1", &["1"]).is_none());
        assert!(fill("SELECT $1", &["1", "2"]).is_none());
        // A policy's E'' string could hide a `$1` behind `\'`.
        assert!(fill("SELECT E'\\\'$1', $1", &["1"]).is_none());
    }
}
