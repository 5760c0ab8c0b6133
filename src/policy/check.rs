//! Problems in policy files, each pinned to a file and line, for
//! `pgward policy check`.
//!
//! serde_yaml knows where a syntax or shape error is. Semantic errors (a
//! mask that does not fit its column, a role asking for DDL) are found
//! after parsing, when positions are gone; they are located again by
//! walking the file's keys — role, then table, then column — the way a
//! person would search for them.

use std::fmt;
use std::path::{Path, PathBuf};

use super::PolicyError;

/// One thing wrong, where it is, and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub path: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.path.display(), self.message),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

impl Problem {
    /// A problem with `role` (and, optionally, a table and column in it).
    pub fn in_role(
        path: &Path,
        role: &str,
        table: Option<&str>,
        column: Option<&str>,
        message: String,
    ) -> Problem {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let keys: Vec<&str> = [Some(role), table, column].into_iter().flatten().collect();
        Problem {
            path: path.to_path_buf(),
            line: locate(&text, &keys),
            message: format!("role \"{role}\": {message}"),
        }
    }
}

impl From<&PolicyError> for Problem {
    fn from(e: &PolicyError) -> Problem {
        match e {
            PolicyError::ReadDir { path, .. } | PolicyError::Read { path, .. } => Problem {
                path: path.clone(),
                line: None,
                message: e.to_string(),
            },
            PolicyError::Parse { path, source } => Problem {
                path: path.clone(),
                line: source.location().map(|l| l.line()),
                message: source.to_string(),
            },
            PolicyError::Invalid {
                path,
                role,
                message,
            } => {
                let table = table_in(message);
                let column = table.and_then(|_| column_in(message));
                let mut p = Problem::in_role(path, role, table, column, message.clone());
                p.message = format!("role \"{role}\": {message}");
                p
            }
            PolicyError::Duplicate { role, second, .. } => {
                let mut p = Problem::in_role(second, role, None, None, String::new());
                p.message = e.to_string();
                p
            }
        }
    }
}

/// `table public.patients: …` → `public.patients`.
fn table_in(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("table ")?;
    rest.split(|c: char| c == ':' || c.is_whitespace()).next()
}

/// `… column dob: …` → `dob`.
fn column_in(message: &str) -> Option<&str> {
    let at = message.find("column ")?;
    message[at + "column ".len()..]
        .split(|c: char| c == ':' || c.is_whitespace() || c == ',')
        .next()
        .map(|c| c.trim_matches('"'))
        .filter(|c| !c.is_empty())
}

/// The 1-based line of the last of `keys`, each searched as a mapping key
/// (`name:`) after the line where the previous one was found. Also finds a
/// name inside a flow list (`deny_columns: [notes]`). `None` if the first
/// key is missing; the deepest key found otherwise.
pub fn locate(text: &str, keys: &[&str]) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut from = 0;
    let mut found = None;
    for key in keys {
        let hit = (from..lines.len()).find(|&i| is_key_line(lines[i], key));
        match hit {
            Some(i) => {
                found = Some(i + 1);
                from = i + 1;
            }
            None => break,
        }
    }
    found
}

fn is_key_line(line: &str, key: &str) -> bool {
    let trimmed = line.trim_start().trim_start_matches("- ");
    let unquoted = |k: &str| {
        trimmed.starts_with(&format!("{k}:"))
            || trimmed.starts_with(&format!("\"{k}\":"))
            || trimmed.starts_with(&format!("'{k}':"))
    };
    if unquoted(key) {
        return true;
    }
    // `deny_columns: [a, notes]`
    match (trimmed.find('['), trimmed.rfind(']')) {
        (Some(open), Some(close)) if open < close => trimmed[open + 1..close]
            .split(',')
            .any(|item| item.trim().trim_matches(|c| c == '"' || c == '\'') == key),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "roles:\n  dba:\n    upstream: {user: postgres}\n  analyst:\n    upstream: {user: r}\n    tables:\n      public.visits:\n        deny_columns: [notes]\n      public.patients:\n        columns:\n          dob: { mask: year }\n";

    #[test]
    fn keys_are_found_in_order_below_each_other() {
        assert_eq!(locate(FILE, &["analyst"]), Some(4));
        assert_eq!(locate(FILE, &["analyst", "public.patients"]), Some(9));
        assert_eq!(
            locate(FILE, &["analyst", "public.patients", "dob"]),
            Some(11)
        );
        assert_eq!(
            locate(FILE, &["analyst", "public.visits", "notes"]),
            Some(8)
        );
        // A missing deeper key falls back to the deepest one found.
        assert_eq!(locate(FILE, &["analyst", "public.nope"]), Some(4));
        assert_eq!(locate(FILE, &["nobody"]), None);
    }

    #[test]
    fn messages_name_their_table_and_column() {
        let m = "table public.patients: column dob: mask year needs a date";
        assert_eq!(table_in(m), Some("public.patients"));
        assert_eq!(column_in(m), Some("dob"));
        assert_eq!(table_in("statement class ddl needs…"), None);
    }

    #[test]
    fn every_bad_file_is_reported_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.yaml"),
            "roles:\n  ok:\n    unrestricted: true\n    upstream: {user: postgres}\n  bad:\n    upstream: {user: r}\n    statements: [ddl]\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("b.yaml"),
            "roles:\n  x:\n    upstream: {user: r}\n    tables:\n      public.t:\n        columns:\n          c: { mask: sparkle }\n",
        )
        .unwrap();
        let (set, errors) = super::super::PolicySet::load_dir_all(dir.path());
        assert_eq!(set.len(), 1, "the valid role still loads");
        let problems: Vec<String> = errors
            .iter()
            .map(|e| Problem::from(e).to_string())
            .collect();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].contains("a.yaml:5: role \"bad\"") && problems[0].contains("ddl"),
            "{problems:?}"
        );
        assert!(
            problems[1].contains("b.yaml:7:") && problems[1].contains("sparkle"),
            "{problems:?}"
        );
    }
}
