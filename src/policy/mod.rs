//! What each role may do: the policy files under `policies/`.
//!
//! Every `*.yaml` file in the directory contributes roles; a role defined
//! twice is an error naming both files. Loading is all-or-nothing, so a reload
//! with a broken file keeps the running policy set. This module is pure: it
//! reads files and answers questions, and knows nothing of sockets or tokio.

pub mod access;
pub mod check;
pub mod filter;
pub mod mask;
mod role;
mod secret;
pub mod table;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use access::{BreakGlass, ConsoleRight, GrantRules};
pub use role::{Role, RoleName, StatementClass, UpstreamAccount};
pub use secret::{Secret, SecretSource};
pub use table::{ColumnRule, TableName, TablePolicy};

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy directory {path}: {source}")]
    ReadDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: serde_yaml::Error,
    },
    #[error("{path}: role {role:?}: {message}")]
    Invalid {
        path: PathBuf,
        role: String,
        message: String,
    },
    #[error("role {role:?} is defined in both {first} and {second}")]
    Duplicate {
        role: String,
        first: PathBuf,
        second: PathBuf,
    },
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    roles: BTreeMap<String, Role>,
}

/// All roles, loaded and validated.
#[derive(Clone, Debug, Default)]
pub struct PolicySet {
    roles: BTreeMap<RoleName, Role>,
    sources: BTreeMap<RoleName, PathBuf>,
}

impl PolicySet {
    /// Loads every `*.yaml` / `*.yml` file in `dir`, in name order.
    pub fn load_dir(dir: &Path) -> Result<PolicySet, PolicyError> {
        let (set, mut errors) = PolicySet::load_dir_all(dir);
        match errors.is_empty() {
            true => Ok(set),
            false => Err(errors.swap_remove(0)),
        }
    }

    /// Loads what is valid and returns every problem found on the way, for
    /// `pgward policy check`. Roles with errors are left out of the set.
    pub fn load_dir_all(dir: &Path) -> (PolicySet, Vec<PolicyError>) {
        let mut set = PolicySet::default();
        let mut errors = Vec::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(source) => {
                errors.push(PolicyError::ReadDir {
                    path: dir.to_path_buf(),
                    source,
                });
                return (set, errors);
            }
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .is_some_and(|ext| ext == "yaml" || ext == "yml")
            })
            .collect();
        files.sort();
        for path in files {
            set.add_file(&path, &mut errors);
        }
        set.check_references(&mut errors);
        (set, errors)
    }

    /// Which file defines `role`.
    pub fn source(&self, role: &RoleName) -> Option<&Path> {
        self.sources.get(role).map(PathBuf::as_path)
    }

    fn add_file(&mut self, path: &Path, errors: &mut Vec<PolicyError>) {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(source) => {
                errors.push(PolicyError::Read {
                    path: path.to_path_buf(),
                    source,
                });
                return;
            }
        };
        let file: PolicyFile = match serde_yaml::from_str(&text) {
            Ok(file) => file,
            Err(source) => {
                errors.push(PolicyError::Parse {
                    path: path.to_path_buf(),
                    source,
                });
                return;
            }
        };
        let base = path.parent().unwrap_or(Path::new("."));
        for (name, mut role) in file.roles {
            let invalid = |message: String| PolicyError::Invalid {
                path: path.to_path_buf(),
                role: name.clone(),
                message,
            };
            let checked = RoleName::parse(&name).and_then(|role_name| {
                role.name = role_name.clone();
                role.validate(base).map(|()| role_name)
            });
            let role_name = match checked {
                Ok(role_name) => role_name,
                Err(message) => {
                    errors.push(invalid(message));
                    continue;
                }
            };
            if let Some(first) = self.sources.get(&role_name) {
                errors.push(PolicyError::Duplicate {
                    role: name,
                    first: first.clone(),
                    second: path.to_path_buf(),
                });
                continue;
            }
            self.sources.insert(role_name.clone(), path.to_path_buf());
            self.roles.insert(role_name, role);
        }
    }

    /// Approvers and break-glass holders must name roles that exist: a typo
    /// would otherwise leave a request nobody can approve.
    fn check_references(&self, errors: &mut Vec<PolicyError>) {
        for (name, role) in &self.roles {
            for r in role.referenced_roles() {
                let known = RoleName::parse(r).is_ok_and(|r| self.roles.contains_key(&r));
                if !known {
                    errors.push(PolicyError::Invalid {
                        path: self.sources.get(name).cloned().unwrap_or_default(),
                        role: name.to_string(),
                        message: format!("refers to role {r:?}, which is not defined"),
                    });
                }
            }
        }
    }

    pub fn role(&self, name: &RoleName) -> Option<&Role> {
        self.roles.get(name)
    }

    pub fn roles(&self) -> impl Iterator<Item = &Role> {
        self.roles.values()
    }

    pub fn len(&self) -> usize {
        self.roles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.roles.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn loads_roles_from_every_file() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "dba.yaml",
            "roles:\n  dba:\n    unrestricted: true\n    upstream: {user: postgres, password: pw}\n    databases: ['*']\n    statements: [all]\n",
        );
        write(
            dir.path(),
            "ops.yml",
            "roles:\n  ops:\n    unrestricted: true\n    upstream: {user: ops}\n    databases: [clinic]\n",
        );
        write(dir.path(), "notes.txt", "not a policy");
        let set = PolicySet::load_dir(dir.path()).unwrap();
        assert_eq!(set.len(), 2);
        let dba = set.role(&RoleName::parse("dba").unwrap()).unwrap();
        assert!(dba.unrestricted);
        assert!(dba.allows_database("anything"));
        let ops = set.role(&RoleName::parse("ops").unwrap()).unwrap();
        assert!(ops.allows_database("clinic"));
        assert!(!ops.allows_database("billing"));
    }

    #[test]
    fn duplicate_roles_name_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let role = "roles:\n  dba:\n    unrestricted: true\n    upstream: {user: postgres}\n";
        write(dir.path(), "a.yaml", role);
        write(dir.path(), "b.yaml", role);
        let err = PolicySet::load_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("a.yaml") && err.contains("b.yaml"), "{err}");
    }

    #[test]
    fn missing_password_env_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "dba.yaml",
            "roles:\n  dba:\n    unrestricted: true\n    upstream: {user: postgres, password_env: PGWARD_TEST_SURELY_UNSET}\n",
        );
        let err = PolicySet::load_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("PGWARD_TEST_SURELY_UNSET"), "{err}");
    }

    #[test]
    fn the_example_policy_from_the_product_brief_loads() {
        std::env::set_var("PGWARD_APP_READER_PASSWORD", "reader");
        std::env::set_var("PGWARD_DBA_PASSWORD", "dba");
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let set = PolicySet::load_dir(&dir).unwrap();
        let analyst = set.role(&RoleName::parse("analyst").unwrap()).unwrap();
        assert!(!analyst.unrestricted);
        assert_eq!(analyst.statements, vec![StatementClass::Read]);
        assert!(analyst.tables.contains_key("public.patients"));
        assert!(set
            .role(&RoleName::parse("dba").unwrap())
            .unwrap()
            .is_grant_only());
    }
}
