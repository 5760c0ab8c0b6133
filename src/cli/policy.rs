//! `pgward policy check` and `pgward policy explain`: the DBA's view of the
//! policies before and after they meet real SQL.
//!
//! `check` reports every problem with file and line — syntax, unknown masks,
//! contradictions, row-filter attributes no user has, and (when the
//! database is reachable) masks that do not fit their column's type,
//! columns that do not exist and masked queries the database rejects.
//! `explain` shows the decision for one statement, the reason, and the SQL
//! the database would receive.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context};
use clap::Subcommand;

use super::ConfigArg;
use crate::config::Config;
use crate::guard::schema_cache::{self, Source};
use crate::policy::check::Problem;
use crate::policy::{PolicySet, Role, RoleName};
use crate::server::{load_runtime, masking_key, upstream_target};
use crate::sql::Enforcer;
use crate::store::{SqliteStore, Store, UserRecord};
use crate::upstream::Target;

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Validate every policy file; check masks against the live schema when
    /// the database is reachable. Exits 1 if anything is wrong.
    Check {
        /// Skip the checks that need the database.
        #[arg(long)]
        offline: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Show the decision for one statement, the reason, and the SQL the
    /// database would receive. Exits 1 if the statement would be refused.
    Explain {
        /// The person whose session to imagine.
        #[arg(long)]
        user: String,
        /// Which of their roles (default: their first).
        #[arg(long)]
        role: Option<String>,
        /// The database they connect to.
        #[arg(long = "db")]
        database: String,
        /// The statement, as the client would send it.
        sql: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

pub fn run(cmd: PolicyCommand) -> anyhow::Result<()> {
    match cmd {
        PolicyCommand::Check { offline, config } => check(&config.config, offline),
        PolicyCommand::Explain {
            user,
            role,
            database,
            sql,
            config,
        } => explain(&config.config, &user, role.as_deref(), &database, &sql),
    }
}

fn check(config_path: &Path, offline: bool) -> anyhow::Result<()> {
    let config =
        Config::load(config_path).with_context(|| format!("loading {}", config_path.display()))?;
    let (set, errors) = PolicySet::load_dir_all(&config.policies);
    let mut problems: Vec<Problem> = errors.iter().map(Problem::from).collect();
    let users = match SqliteStore::open(&config.store.path).and_then(|s| s.users()) {
        Ok(users) => users,
        Err(e) => {
            println!("note: cannot read the user store ({e}); attribute checks skipped");
            Vec::new()
        }
    };
    problems.extend(attribute_problems(&set, &users));
    let mut checked = Vec::new();
    if !offline && set.roles().any(|r| !r.unrestricted) {
        let target = upstream_target(&config)?;
        let live = super::runtime()?.block_on(live_problems(&set, &users, &target, &mut checked));
        problems.extend(live);
    }
    problems.sort_by(|a, b| (&a.path, a.line).cmp(&(&b.path, b.line)));
    for p in &problems {
        println!("{p}");
    }
    if !problems.is_empty() {
        bail!(
            "{} problem(s) in the policies in {}",
            problems.len(),
            config.policies.display()
        );
    }
    let checked = match checked.is_empty() {
        true => String::new(),
        false => format!("; masks checked against {}", checked.join(", ")),
    };
    println!(
        "{}: {} role(s) OK{checked}",
        config.policies.display(),
        set.len()
    );
    Ok(())
}

/// Row filters that use an attribute the role's users do not have.
fn attribute_problems(set: &PolicySet, users: &[UserRecord]) -> Vec<Problem> {
    let mut out = Vec::new();
    for role in set.roles().filter(|r| !r.unrestricted) {
        let holders: Vec<&UserRecord> = users
            .iter()
            .filter(|u| u.roles.contains(&role.name))
            .collect();
        if holders.is_empty() {
            continue;
        }
        for (table, policy) in &role.tables {
            let Some(filter) = &policy.rows else { continue };
            for attr in filter.attributes() {
                let lacking: Vec<&str> = holders
                    .iter()
                    .filter(|u| !u.attrs.contains_key(attr))
                    .map(|u| u.name.as_str())
                    .collect();
                if lacking.is_empty() {
                    continue;
                }
                let known = users.iter().any(|u| u.attrs.contains_key(attr));
                let message = format!(
                    "table {table}: {}attribute user.{attr} is missing for {} (set it with `pgward user set-attr`); their logins are refused",
                    if known { "" } else { "unknown " },
                    lacking.join(", ")
                );
                out.push(problem(set, role, Some(table), Some("rows"), message));
            }
        }
    }
    out
}

fn problem(
    set: &PolicySet,
    role: &Role,
    table: Option<&str>,
    column: Option<&str>,
    message: String,
) -> Problem {
    let path = set.source(&role.name).unwrap_or(Path::new("?"));
    Problem::in_role(path, role.name.as_str(), table, column, message)
}

/// Checks each restricted role's tables against each database it names.
async fn live_problems(
    set: &PolicySet,
    users: &[UserRecord],
    target: &Target,
    checked: &mut Vec<String>,
) -> Vec<Problem> {
    let mut out = Vec::new();
    for role in set.roles().filter(|r| !r.unrestricted) {
        for database in role.databases.iter().filter(|d| *d != "*") {
            let source = Source {
                target: target.clone(),
                user: role.upstream.user.clone(),
                password: role.upstream.resolved_password.clone(),
                database: database.clone(),
            };
            let mut client = match schema_cache::open(&source).await {
                Ok(c) => c,
                Err(e) => {
                    println!(
                        "note: role \"{}\": {e}; live checks for \"{database}\" skipped",
                        role.name
                    );
                    continue;
                }
            };
            let schema = match schema_cache::read_schema(&mut client, 0).await {
                Ok(s) => s,
                Err(e) => {
                    out.push(problem(set, role, None, None, e));
                    continue;
                }
            };
            let attrs = sample_attributes(role, users);
            let enforcer = Enforcer::new(role, database, &attrs, &schema, "policy-check");
            for (table, compiled) in enforcer.compiled() {
                let key = policy_key(role, &table);
                if let (Some(policy), Some(relation)) =
                    (role.tables.get(&key), schema.relations.get(&table))
                {
                    let named = policy.columns.keys().chain(&policy.deny_columns);
                    for column in named {
                        if !relation.columns.iter().any(|c| &c.name == column) {
                            let message = format!(
                                "table {key}: column {column} does not exist in \"{database}\""
                            );
                            out.push(problem(set, role, Some(&key), Some(column), message));
                        }
                    }
                }
                let sql = match compiled {
                    Ok(sql) => sql,
                    Err(e) => {
                        let column = e.strip_prefix("column ").and_then(|r| r.split(':').next());
                        let message = format!("table {key} in \"{database}\": {e}");
                        out.push(problem(set, role, Some(&key), column, message));
                        continue;
                    }
                };
                let probe = format!("SELECT * FROM ({sql}) AS probe LIMIT 0");
                if let Err(e) = client.query(&probe).await {
                    let message = format!(
                        "table {key}: \"{database}\" rejects the masked query (a custom mask or the row filter): {e}"
                    );
                    out.push(problem(set, role, Some(&key), Some("rows"), message));
                }
            }
            client.close().await;
            if !checked.contains(database) {
                checked.push(database.clone());
            }
        }
    }
    out
}

/// The key under which a role's policy lists `table` (`patients` or
/// `public.patients`).
fn policy_key(role: &Role, table: &crate::policy::TableName) -> String {
    role.tables
        .keys()
        .find(|k| crate::policy::TableName::parse(k).ok().as_ref() == Some(table))
        .cloned()
        .unwrap_or_else(|| table.to_string())
}

/// Attribute values to render row filters with: a real user's if any, else 0.
fn sample_attributes(role: &Role, users: &[UserRecord]) -> BTreeMap<String, String> {
    let holder = users.iter().find(|u| u.roles.contains(&role.name));
    role.required_attributes()
        .into_iter()
        .map(|a| {
            let value = holder
                .and_then(|u| u.attrs.get(&a).cloned())
                .unwrap_or_else(|| "0".into());
            (a, value)
        })
        .collect()
}

fn explain(
    config_path: &Path,
    user: &str,
    role: Option<&str>,
    database: &str,
    sql: &str,
) -> anyhow::Result<()> {
    let runtime = load_runtime(config_path)?;
    let config = &runtime.config;
    let store = SqliteStore::open(&config.store.path)?;
    let Some(record) = store.user(user)? else {
        bail!("no user named \"{user}\"");
    };
    let role_name = match role {
        Some(r) => RoleName::parse(r).map_err(anyhow::Error::msg)?,
        None => record
            .roles
            .first()
            .cloned()
            .with_context(|| format!("user \"{user}\" has no role"))?,
    };
    if !record.roles.contains(&role_name) {
        bail!("user \"{user}\" does not hold role \"{role_name}\"");
    }
    let Some(role) = runtime.policies.role(&role_name) else {
        bail!("role \"{role_name}\" is not defined in the policies");
    };
    let kind = if role.unrestricted {
        "unrestricted"
    } else {
        "restricted"
    };
    println!("user:     {user} (role {role_name}, {kind})");
    println!("database: {database}");
    if record.disabled {
        return refused("the user is disabled", None);
    }
    if !role.allows_database(database) {
        return refused(
            &format!("role \"{role_name}\" may not connect to database \"{database}\""),
            None,
        );
    }
    if role.unrestricted {
        println!("decision: relayed as typed (the role is unrestricted; still audited)");
        println!("\n{sql}");
        return Ok(());
    }
    let missing: Vec<String> = role
        .required_attributes()
        .into_iter()
        .filter(|a| !record.attrs.contains_key(a))
        .collect();
    if !missing.is_empty() {
        return refused(
            &format!("the user lacks attribute(s) {}", missing.join(", ")),
            Some("set them with `pgward user set-attr`"),
        );
    }
    let key = masking_key(&config.enforcement.masking_key)?;
    let source = Source {
        target: runtime.upstream.clone(),
        user: role.upstream.user.clone(),
        password: role.upstream.resolved_password.clone(),
        database: database.to_string(),
    };
    let schema = super::runtime()?.block_on(async {
        let mut client = schema_cache::open(&source).await?;
        let schema = schema_cache::read_schema(&mut client, 0).await;
        client.close().await;
        schema
    });
    let schema = schema.map_err(anyhow::Error::msg)?;
    let enforcer = Enforcer::new(role, database, &record.attrs, &schema, &key);
    match enforcer.rewrite(sql) {
        Ok(r) => {
            let tables: Vec<String> = r.tables.iter().map(ToString::to_string).collect();
            if tables.is_empty() {
                println!("decision: allowed (reads no protected table)");
            } else {
                println!(
                    "decision: rewritten (protected tables: {})",
                    tables.join(", ")
                );
            }
            let pretty = pretty(&r.sql).replace(&format!("'{key}'"), "'<masking key>'");
            println!("\n{pretty}");
            Ok(())
        }
        Err(refusal) => refused(&refusal.message, refusal.hint.as_deref()),
    }
}

fn refused(reason: &str, hint: Option<&str>) -> anyhow::Result<()> {
    println!("decision: refused (SQLSTATE 42501)");
    println!("reason:   {reason}");
    if let Some(hint) = hint {
        println!("hint:     {hint}");
    }
    bail!("the statement would be refused")
}

/// The rewritten statement, indented for reading.
fn pretty(sql: &str) -> String {
    match crate::sql::parse::parse(sql) {
        Ok(statements) => statements
            .iter()
            .map(|s| format!("{s:#};"))
            .collect::<Vec<_>>()
            .join("\n"),
        Err(_) => sql.to_string(),
    }
}
