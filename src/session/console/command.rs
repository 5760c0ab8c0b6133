//! The admin console's commands, parsed from the text of a simple Query.
//!
//! The grammar is small and fixed, in the spirit of PgBouncer's console:
//! keywords in any case, names as bare identifiers, durations and reasons
//! as single-quoted strings (`''` for a quote inside), ids as integers.

use std::time::Duration;

/// One console command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Help,
    ShowSessions,
    ShowGrants,
    ShowRequests,
    Whoami,
    Request {
        role: String,
        database: Option<String>,
        duration: Duration,
        reason: String,
    },
    Decide {
        id: i64,
        approve: bool,
        note: Option<String>,
    },
    Review {
        id: i64,
        note: Option<String>,
    },
    BreakGlass {
        role: String,
        database: Option<String>,
        duration: Option<Duration>,
        reason: String,
    },
    Grant {
        role: String,
        user: String,
        database: Option<String>,
        duration: Duration,
        reason: String,
    },
    Revoke {
        id: i64,
        reason: Option<String>,
    },
    Kill {
        session: u64,
    },
    IssueCertificate {
        ttl: Option<Duration>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Word(String),
    Str(String),
    Num(i64),
}

fn tokens(text: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '\'' {
            chars.next();
            let mut s = String::new();
            loop {
                match chars.next() {
                    Some('\'') if chars.peek() == Some(&'\'') => {
                        chars.next();
                        s.push('\'');
                    }
                    Some('\'') => break,
                    Some(ch) => s.push(ch),
                    None => return Err("unterminated quoted string".into()),
                }
            }
            out.push(Token::Str(s));
        } else if c.is_ascii_digit() {
            let mut s = String::new();
            while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                s.push(d);
                chars.next();
            }
            let n = s.parse().map_err(|_| format!("number {s} is too large"))?;
            out.push(Token::Num(n));
        } else if c.is_alphanumeric() || c == '_' {
            let mut s = String::new();
            while let Some(&d) = chars
                .peek()
                .filter(|d| d.is_alphanumeric() || matches!(d, '_' | '-' | '.' | '@'))
            {
                s.push(d);
                chars.next();
            }
            out.push(Token::Word(s));
        } else {
            return Err(format!("unexpected character {c:?}"));
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek_kw(&self, kw: &str) -> bool {
        matches!(self.tokens.get(self.at), Some(Token::Word(w)) if w.eq_ignore_ascii_case(kw))
    }

    fn kw(&mut self, kw: &str) -> Result<(), String> {
        if self.peek_kw(kw) {
            self.at += 1;
            Ok(())
        } else {
            Err(format!("expected {kw}"))
        }
    }

    fn opt_kw(&mut self, kw: &str) -> bool {
        let found = self.peek_kw(kw);
        if found {
            self.at += 1;
        }
        found
    }

    fn name(&mut self, what: &str) -> Result<String, String> {
        match self.tokens.get(self.at) {
            Some(Token::Word(w)) | Some(Token::Str(w)) => {
                self.at += 1;
                Ok(w.clone())
            }
            _ => Err(format!("expected {what}")),
        }
    }

    fn string(&mut self, what: &str) -> Result<String, String> {
        match self.tokens.get(self.at) {
            Some(Token::Str(s)) => {
                self.at += 1;
                Ok(s.clone())
            }
            _ => Err(format!("expected {what} as a quoted string")),
        }
    }

    fn number(&mut self, what: &str) -> Result<i64, String> {
        match self.tokens.get(self.at) {
            Some(Token::Num(n)) => {
                self.at += 1;
                Ok(*n)
            }
            _ => Err(format!("expected {what} (a number)")),
        }
    }

    fn duration(&mut self) -> Result<Duration, String> {
        let text = self.string("a duration such as '1h' or '30 minutes'")?;
        humantime::parse_duration(text.trim())
            .map_err(|e| format!("invalid duration '{text}': {e}"))
    }

    fn opt_text(&mut self, kw: &str) -> Result<Option<String>, String> {
        match self.opt_kw(kw) {
            true => self.string(kw).map(Some),
            false => Ok(None),
        }
    }

    fn opt_database(&mut self) -> Result<Option<String>, String> {
        match self.opt_kw("ON") {
            true => {
                self.kw("DATABASE")?;
                self.name("a database name").map(Some)
            }
            false => Ok(None),
        }
    }

    fn end(&self) -> Result<(), String> {
        match self.tokens.get(self.at) {
            None => Ok(()),
            Some(t) => Err(format!("unexpected {}", describe(t))),
        }
    }
}

fn describe(t: &Token) -> String {
    match t {
        Token::Word(w) => format!("\"{w}\""),
        Token::Str(s) => format!("'{s}'"),
        Token::Num(n) => n.to_string(),
    }
}

/// Parses one command (no trailing semicolon).
pub fn parse(text: &str) -> Result<Command, String> {
    let tokens = tokens(text)?;
    let mut p = Parser { tokens, at: 0 };
    let cmd = if p.opt_kw("HELP") {
        Command::Help
    } else if p.opt_kw("SHOW") {
        if p.opt_kw("SESSIONS") {
            Command::ShowSessions
        } else if p.opt_kw("GRANTS") {
            Command::ShowGrants
        } else if p.opt_kw("REQUESTS") {
            Command::ShowRequests
        } else if p.opt_kw("HELP") {
            Command::Help
        } else {
            return Err("SHOW takes SESSIONS, GRANTS, REQUESTS or HELP".into());
        }
    } else if p.opt_kw("WHOAMI") {
        Command::Whoami
    } else if p.opt_kw("REQUEST") {
        p.kw("ROLE")?;
        let role = p.name("a role name")?;
        let database = p.opt_database()?;
        p.kw("FOR")?;
        let duration = p.duration()?;
        p.kw("REASON")?;
        let reason = p.string("the reason")?;
        Command::Request {
            role,
            database,
            duration,
            reason,
        }
    } else if p.peek_kw("APPROVE") || p.peek_kw("DENY") {
        let approve = p.opt_kw("APPROVE");
        if !approve {
            p.kw("DENY")?;
        }
        let id = p.number("a request id")?;
        let note = p.opt_text("NOTE")?;
        Command::Decide { id, approve, note }
    } else if p.opt_kw("REVIEW") {
        let id = p.number("a request id")?;
        let note = p.opt_text("NOTE")?;
        Command::Review { id, note }
    } else if p.opt_kw("BREAK") {
        p.kw("GLASS")?;
        p.kw("ROLE")?;
        let role = p.name("a role name")?;
        let database = p.opt_database()?;
        let duration = match p.opt_kw("FOR") {
            true => Some(p.duration()?),
            false => None,
        };
        p.kw("REASON")?;
        let reason = p.string("the reason")?;
        Command::BreakGlass {
            role,
            database,
            duration,
            reason,
        }
    } else if p.opt_kw("GRANT") {
        p.kw("ROLE")?;
        let role = p.name("a role name")?;
        p.kw("TO")?;
        let user = p.name("a user name")?;
        let database = p.opt_database()?;
        p.kw("FOR")?;
        let duration = p.duration()?;
        p.kw("REASON")?;
        let reason = p.string("the reason")?;
        Command::Grant {
            role,
            user,
            database,
            duration,
            reason,
        }
    } else if p.opt_kw("REVOKE") {
        p.kw("GRANT")?;
        let id = p.number("a grant id")?;
        let reason = p.opt_text("REASON")?;
        Command::Revoke { id, reason }
    } else if p.opt_kw("KILL") {
        let id = p.number("a session id")?;
        Command::Kill {
            session: u64::try_from(id).map_err(|_| "invalid session id".to_string())?,
        }
    } else if p.opt_kw("ISSUE") {
        p.kw("CERTIFICATE")?;
        let ttl = match p.opt_kw("FOR") {
            true => Some(p.duration()?),
            false => None,
        };
        Command::IssueCertificate { ttl }
    } else {
        return Err("unknown command; try HELP".into());
    };
    p.end()?;
    Ok(cmd)
}

/// Splits a Query's text into commands at semicolons outside quotes;
/// empty pieces are dropped.
pub fn split(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (i, c) in text.char_indices() {
        match c {
            '\'' => quoted = !quoted,
            ';' if !quoted => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out.into_iter()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_commands_of_the_issue() {
        assert_eq!(parse("show sessions").unwrap(), Command::ShowSessions);
        assert_eq!(
            parse("REQUEST ROLE dba FOR '1 hour' REASON 'fix the index'").unwrap(),
            Command::Request {
                role: "dba".into(),
                database: None,
                duration: Duration::from_secs(3600),
                reason: "fix the index".into(),
            }
        );
        assert_eq!(
            parse("approve 12").unwrap(),
            Command::Decide {
                id: 12,
                approve: true,
                note: None
            }
        );
        assert_eq!(
            parse("DENY 12 NOTE 'not today'").unwrap(),
            Command::Decide {
                id: 12,
                approve: false,
                note: Some("not today".into())
            }
        );
        assert_eq!(parse("KILL 45").unwrap(), Command::Kill { session: 45 });
        assert_eq!(
            parse("BREAK GLASS ROLE dba ON DATABASE clinic REASON 'outage: it''s down'").unwrap(),
            Command::BreakGlass {
                role: "dba".into(),
                database: Some("clinic".into()),
                duration: None,
                reason: "outage: it's down".into(),
            }
        );
        assert_eq!(
            parse("grant role dba to alice for '2h' reason 'x'").unwrap(),
            Command::Grant {
                role: "dba".into(),
                user: "alice".into(),
                database: None,
                duration: Duration::from_secs(7200),
                reason: "x".into(),
            }
        );
    }

    #[test]
    fn bad_commands_say_what_is_wrong() {
        assert!(parse("DROP TABLE x")
            .unwrap_err()
            .contains("unknown command"));
        assert!(parse("REQUEST ROLE dba FOR 1h REASON 'x'")
            .unwrap_err()
            .contains("quoted"));
        assert!(parse("REQUEST ROLE dba FOR 'soon' REASON 'x'")
            .unwrap_err()
            .contains("invalid duration"));
        assert!(parse("REQUEST ROLE dba FOR '1h'")
            .unwrap_err()
            .contains("REASON"));
        assert!(parse("APPROVE twelve").unwrap_err().contains("number"));
        assert!(parse("KILL 1 2").unwrap_err().contains("unexpected"));
        assert!(parse("REQUEST ROLE dba FOR '1h' REASON 'x")
            .unwrap_err()
            .contains("unterminated"));
        assert!(parse("APPROVE 99999999999999999999").is_err());
    }

    #[test]
    fn splits_at_semicolons_outside_quotes() {
        assert_eq!(
            split("SHOW GRANTS; REQUEST ROLE a FOR '1h' REASON 'x; y';;"),
            vec!["SHOW GRANTS", "REQUEST ROLE a FOR '1h' REASON 'x; y'"]
        );
        assert!(split(" ; ").is_empty());
    }
}
