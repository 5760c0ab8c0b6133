//! The name a person logs in with, and how they pick a role.
//!
//! A person with several roles picks one per session in either of two ways:
//!
//! * `user=alice+dba` — works in every client, including BI tools that only
//!   have user and password fields;
//! * `options='-c pgward.role=dba'` (or `PGOPTIONS`) — for psql and libpq.
//!
//! Without a choice, the user's first role applies. The `pgward.role` option
//! is consumed here and never forwarded to the database.

use crate::net::startup::{join_options, split_options};
use crate::policy::RoleName;

/// The parsed login: who, and which role they asked for (if any).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginName {
    pub user: String,
    pub role: Option<RoleName>,
    /// The `options` startup parameter with pgward's own settings removed.
    pub forwarded_options: Option<String>,
}

impl LoginName {
    pub fn parse(user_param: &str, options: Option<&str>) -> Result<LoginName, String> {
        let (user, mut role) = match user_param.split_once('+') {
            Some((user, role)) => (user.to_string(), Some(RoleName::parse(role)?)),
            None => (user_param.to_string(), None),
        };
        let mut forwarded_options = None;
        if let Some(options) = options {
            let args = split_options(options);
            let mut kept = Vec::with_capacity(args.len());
            let mut i = 0;
            while i < args.len() {
                // Both "-c name=value" and "-cname=value" / "--name=value".
                let (setting, consumed) = match args[i].as_str() {
                    "-c" => (args.get(i + 1).map(String::as_str), 2),
                    a if a.starts_with("-c") => (Some(&a[2..]), 1),
                    a if a.starts_with("--") => (Some(&a[2..]), 1),
                    _ => (None, 1),
                };
                let role_setting = setting.and_then(|s| s.strip_prefix("pgward.role="));
                match role_setting {
                    Some(value) => {
                        let picked = RoleName::parse(value)?;
                        if role.as_ref().is_some_and(|r| *r != picked) {
                            return Err(format!(
                                "role chosen twice: {} in the user name and {} in options",
                                role.as_ref().map(RoleName::as_str).unwrap_or(""),
                                picked
                            ));
                        }
                        role = Some(picked);
                    }
                    None => kept.extend(args[i..(i + consumed).min(args.len())].iter().cloned()),
                }
                i += consumed;
            }
            if !kept.is_empty() {
                forwarded_options = Some(join_options(&kept));
            }
        }
        Ok(LoginName {
            user,
            role,
            forwarded_options,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_from_user_name() {
        let login = LoginName::parse("alice+dba", None).unwrap();
        assert_eq!(login.user, "alice");
        assert_eq!(login.role.unwrap().as_str(), "dba");
    }

    #[test]
    fn role_from_options_is_removed_before_forwarding() {
        let login =
            LoginName::parse("alice", Some("-c pgward.role=dba -c statement_timeout=5s")).unwrap();
        assert_eq!(login.role.unwrap().as_str(), "dba");
        assert_eq!(
            login.forwarded_options.as_deref(),
            Some("-c statement_timeout=5s")
        );
        let login = LoginName::parse("alice", Some("--pgward.role=dba")).unwrap();
        assert_eq!(login.role.unwrap().as_str(), "dba");
        assert_eq!(login.forwarded_options, None);
    }

    #[test]
    fn conflicting_choices_are_refused() {
        assert!(LoginName::parse("alice+dba", Some("-c pgward.role=analyst")).is_err());
        assert!(LoginName::parse("alice+", None).is_err());
        assert!(LoginName::parse("alice+d b", None).is_err());
    }
}
