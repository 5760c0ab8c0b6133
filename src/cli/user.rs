//! `pgward user …`: people, their roles, attributes and passwords.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal};
use std::time::SystemTime;

use anyhow::{bail, Context};
use clap::Subcommand;

use serde_json::json;

use super::admin_event::{os_user, record_change};
use super::ConfigArg;
use crate::auth::password::hash_password;
use crate::config::Config;
use crate::policy::{PolicySet, RoleName};
use crate::store::{validate_attr_key, validate_user_name, NewUser, SqliteStore, Store};

#[derive(Subcommand)]
pub enum UserCommand {
    /// Add a person. The first --role is used when they do not pick one.
    Add {
        name: String,
        /// A role from the policies; repeat for several.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// An attribute for row filters, e.g. --attr clinic_id=1; repeatable.
        #[arg(long = "attr", value_parser = parse_attr)]
        attrs: Vec<(String, String)>,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List people.
    List {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Set a new password.
    Passwd {
        name: String,
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Refuse all further logins by this person.
    Disable {
        name: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Allow logins again.
    Enable {
        name: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Set or remove attributes: set-attr alice clinic_id=2 --unset team
    SetAttr {
        name: String,
        #[arg(value_parser = parse_attr)]
        attrs: Vec<(String, String)>,
        #[arg(long = "unset")]
        unset: Vec<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
}

fn parse_attr(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected key=value, got {s:?}"))?;
    validate_attr_key(k)?;
    Ok((k.to_string(), v.to_string()))
}

const MIN_PASSWORD_LEN: usize = 8;

fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    let password = if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from standard input")?;
        line.trim_end_matches(['\r', '\n']).to_string()
    } else if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ")?;
        let again = rpassword::prompt_password("Again: ")?;
        if first != again {
            bail!("the passwords do not match");
        }
        first
    } else {
        bail!("no password given: use --password-stdin, or run in a terminal to be asked");
    };
    if password.chars().count() < MIN_PASSWORD_LEN {
        bail!("the password must be at least {MIN_PASSWORD_LEN} characters");
    }
    Ok(password)
}

fn open(config: &ConfigArg) -> anyhow::Result<(Config, SqliteStore)> {
    let cfg = Config::load(&config.config)
        .with_context(|| format!("loading {}", config.config.display()))?;
    let store = SqliteStore::open(&cfg.store.path)
        .with_context(|| format!("opening the store {}", cfg.store.path.display()))?;
    Ok((cfg, store))
}

fn when(t: Option<SystemTime>) -> String {
    match t {
        Some(t) => humantime::format_rfc3339_seconds(t).to_string(),
        None => "never".into(),
    }
}

pub fn run(cmd: UserCommand) -> anyhow::Result<()> {
    match cmd {
        UserCommand::Add {
            name,
            roles,
            attrs,
            password_stdin,
            config,
        } => {
            validate_user_name(&name).map_err(anyhow::Error::msg)?;
            let (cfg, store) = open(&config)?;
            let policies = PolicySet::load_dir(&cfg.policies)?;
            let roles = roles
                .iter()
                .map(|r| {
                    let role = RoleName::parse(r).map_err(anyhow::Error::msg)?;
                    if policies.role(&role).is_none() {
                        bail!("role {r:?} is not defined in {}", cfg.policies.display());
                    }
                    Ok(role)
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let password = read_password(password_stdin)?;
            let password_hash =
                hash_password(&password).map_err(|e| anyhow::anyhow!("hashing: {e}"))?;
            store.add_user(&NewUser {
                name: name.clone(),
                password_hash,
                roles: roles.clone(),
                attrs: attrs.into_iter().collect::<BTreeMap<_, _>>(),
            })?;
            let roles: Vec<&str> = roles.iter().map(RoleName::as_str).collect();
            println!("added user {name} (roles: {})", roles.join(", "));
            record_change(
                &cfg,
                &os_user(),
                "user.add",
                json!({ "user": name, "roles": roles }),
            )?;
        }
        UserCommand::List { config } => {
            let (_, store) = open(&config)?;
            println!(
                "{:<24} {:<24} {:<9} {:<21} ATTRIBUTES",
                "NAME", "ROLES", "STATUS", "LAST LOGIN"
            );
            for u in store.users()? {
                let roles: Vec<&str> = u.roles.iter().map(RoleName::as_str).collect();
                let attrs: Vec<String> = u.attrs.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!(
                    "{:<24} {:<24} {:<9} {:<21} {}",
                    u.name,
                    roles.join(","),
                    if u.disabled { "disabled" } else { "active" },
                    when(u.last_login),
                    attrs.join(" ")
                );
            }
        }
        UserCommand::Passwd {
            name,
            password_stdin,
            config,
        } => {
            let (cfg, store) = open(&config)?;
            if store.user(&name)?.is_none() {
                bail!("no user named {name:?}");
            }
            let password = read_password(password_stdin)?;
            let hash = hash_password(&password).map_err(|e| anyhow::anyhow!("hashing: {e}"))?;
            store.set_password(&name, &hash)?;
            println!("password changed for {name}");
            record_change(&cfg, &os_user(), "user.passwd", json!({ "user": name }))?;
        }
        UserCommand::Disable { name, config } => {
            let (cfg, store) = open(&config)?;
            store.set_disabled(&name, true)?;
            println!("disabled {name}");
            record_change(&cfg, &os_user(), "user.disable", json!({ "user": name }))?;
        }
        UserCommand::Enable { name, config } => {
            let (cfg, store) = open(&config)?;
            store.set_disabled(&name, false)?;
            println!("enabled {name}");
            record_change(&cfg, &os_user(), "user.enable", json!({ "user": name }))?;
        }
        UserCommand::SetAttr {
            name,
            attrs,
            unset,
            config,
        } => {
            if attrs.is_empty() && unset.is_empty() {
                bail!("nothing to change: give key=value pairs and/or --unset KEY");
            }
            let (cfg, store) = open(&config)?;
            for (k, v) in &attrs {
                store.set_attr(&name, k, Some(v))?;
            }
            for k in &unset {
                store.set_attr(&name, k, None)?;
            }
            println!("updated attributes of {name}");
            // Attribute names only: values (a clinic, a team) can be
            // sensitive and are in the store.
            let set: Vec<&str> = attrs.iter().map(|(k, _)| k.as_str()).collect();
            record_change(
                &cfg,
                &os_user(),
                "user.set_attr",
                json!({ "user": name, "set": set, "unset": unset }),
            )?;
        }
    }
    Ok(())
}
