//! Secrets referenced from policy files: inline, from the environment, or from
//! a file. Resolved once at load time so a missing variable is reported by
//! `serve` and reload, not at the first login.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where a password comes from. At most one of the fields may be set.
#[derive(Clone, Default)]
pub struct SecretSource {
    pub password: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretSource")
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_env", &self.password_env)
            .field("password_file", &self.password_file)
            .finish()
    }
}

impl SecretSource {
    pub fn resolve(&self, base: &Path) -> Result<Option<Secret>, String> {
        match (&self.password, &self.password_env, &self.password_file) {
            (None, None, None) => Ok(None),
            (Some(p), None, None) => Ok(Some(Secret(p.clone()))),
            (None, Some(var), None) => std::env::var(var)
                .map(|v| Some(Secret(v)))
                .map_err(|_| format!("environment variable {var} is not set")),
            (None, None, Some(file)) => {
                let path = if file.is_relative() {
                    base.join(file)
                } else {
                    file.clone()
                };
                std::fs::read_to_string(&path)
                    .map(|v| Some(Secret(v.trim_end_matches(['\r', '\n']).to_string())))
                    .map_err(|e| format!("cannot read password_file {}: {e}", path.display()))
            }
            _ => Err("set only one of password, password_env, password_file".into()),
        }
    }
}

/// A secret value that never prints itself.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}
