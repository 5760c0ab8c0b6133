//! `pgward user …`: people, their roles, attributes, passwords and second
//! factors.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal};
use std::time::SystemTime;

use anyhow::{bail, Context};
use clap::Subcommand;

use serde_json::json;

use super::admin_event::{os_user, record_change};
use super::ConfigArg;
use crate::auth::password::hash_password;
use crate::auth::totp::{self, RecoveryCode, TotpSecret};
use crate::config::Config;
use crate::policy::{PolicySet, RoleName};
use crate::store::mfa::MfaStore;
use crate::store::{
    validate_attr_key, validate_user_name, NewUser, SqliteStore, Store, UserRecord,
};

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
        /// A service account (an application, not a person): exempt from
        /// auth.mfa_required, meant to log in with a client certificate.
        #[arg(long)]
        service: bool,
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
    /// Second factor (TOTP): enroll, reset, require.
    #[command(subcommand)]
    Mfa(MfaCommand),
}

#[derive(Subcommand)]
pub enum MfaCommand {
    /// Give a person a TOTP secret: prints the otpauth:// URI and a QR code
    /// for an authenticator app, and 10 single-use recovery codes (shown
    /// once). From then on they log in with password:code.
    Enroll {
        name: String,
        /// Replace an enrolled secret (the old app entry and recovery codes
        /// stop working).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Remove a person's TOTP secret and recovery codes (a lost phone).
    Reset {
        name: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Require a second factor for this person: without one enrolled their
    /// logins are refused. --off lifts the requirement.
    Require {
        name: String,
        #[arg(long)]
        off: bool,
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

/// The MFA column of `user list`.
fn mfa_state(user: &UserRecord, required_for_all: bool) -> &'static str {
    if user.mfa_enrolled {
        "enrolled"
    } else if user.mfa_required || (required_for_all && !user.service) {
        "required"
    } else {
        "\u{2014}"
    }
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
            service,
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
            if service {
                store.set_service(&name, true)?;
            }
            let roles: Vec<&str> = roles.iter().map(RoleName::as_str).collect();
            let kind = if service { "service account" } else { "user" };
            println!("added {kind} {name} (roles: {})", roles.join(", "));
            record_change(
                &cfg,
                &os_user(),
                "user.add",
                json!({ "user": name, "roles": roles, "service": service }),
            )?;
        }
        UserCommand::List { config } => {
            let (cfg, store) = open(&config)?;
            println!(
                "{:<24} {:<24} {:<9} {:<8} {:<9} {:<21} ATTRIBUTES",
                "NAME", "ROLES", "STATUS", "KIND", "MFA", "LAST LOGIN"
            );
            for u in store.users()? {
                let roles: Vec<&str> = u.roles.iter().map(RoleName::as_str).collect();
                let attrs: Vec<String> = u.attrs.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!(
                    "{:<24} {:<24} {:<9} {:<8} {:<9} {:<21} {}",
                    u.name,
                    roles.join(","),
                    if u.disabled { "disabled" } else { "active" },
                    if u.service { "service" } else { "person" },
                    mfa_state(&u, cfg.auth.mfa_required),
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
        UserCommand::Mfa(cmd) => mfa(cmd)?,
    }
    Ok(())
}

fn mfa(cmd: MfaCommand) -> anyhow::Result<()> {
    match cmd {
        MfaCommand::Enroll {
            name,
            force,
            config,
        } => {
            let (cfg, store) = open(&config)?;
            let Some(user) = store.user(&name)? else {
                bail!("no user named {name:?}");
            };
            let already = "already has a second factor enrolled; --force replaces it (their authenticator app entry and recovery codes stop working)";
            if user.mfa_enrolled && !force {
                bail!("{name} {already}");
            }
            let secret = TotpSecret::generate();
            let codes = RecoveryCode::generate_set();
            let hashes: Vec<String> = codes.iter().map(RecoveryCode::hash).collect();
            if !store.enroll_totp(&name, secret.base32(), &hashes, force)? {
                bail!("{name} {already}");
            }
            let uri = secret.otpauth_uri(&name);
            let qr =
                totp::terminal_qr(&uri).map_err(|e| anyhow::anyhow!("drawing the QR code: {e}"))?;
            println!("TOTP enrolled for {name}. Scan this with an authenticator app:\n");
            println!("{qr}\n");
            println!("or add it by hand (SHA-1, 6 digits, 30 seconds):");
            println!("  {uri}");
            println!("  secret: {}\n", secret.base32());
            println!(
                "{name} now logs in with the password, ':' and the current code: PASSWORD:123456\n"
            );
            println!(
                "Recovery codes, each usable once in place of a code (shown once; store them safely):"
            );
            for code in &codes {
                println!("  {}", code.display());
            }
            // Never the secret or a code: the trail is read by many.
            record_change(
                &cfg,
                &os_user(),
                "user.mfa_enroll",
                json!({ "user": name, "replaced": user.mfa_enrolled, "recovery_codes": codes.len() }),
            )?;
        }
        MfaCommand::Reset { name, config } => {
            let (cfg, store) = open(&config)?;
            let was_enrolled = store.reset_mfa(&name)?;
            if was_enrolled {
                println!("removed the second factor and recovery codes of {name}");
            } else {
                println!("{name} had no second factor enrolled; nothing to remove");
            }
            let user = store.user(&name)?;
            if user.is_some_and(|u| u.mfa_required || (cfg.auth.mfa_required && !u.service)) {
                println!(
                    "{name} must use a second factor: logins are refused until `pgward user mfa enroll {name}`"
                );
            }
            record_change(
                &cfg,
                &os_user(),
                "user.mfa_reset",
                json!({ "user": name, "was_enrolled": was_enrolled }),
            )?;
        }
        MfaCommand::Require { name, off, config } => {
            let (cfg, store) = open(&config)?;
            let required = !off;
            store.set_mfa_required(&name, required)?;
            if required {
                println!("{name} must now log in with a second factor");
                if store.user(&name)?.is_some_and(|u| !u.mfa_enrolled) {
                    println!(
                        "{name} has none enrolled yet: logins are refused until `pgward user mfa enroll {name}`"
                    );
                }
            } else if cfg.auth.mfa_required {
                println!(
                    "lifted the requirement for {name} (auth.mfa_required still applies to everyone but service accounts)"
                );
            } else {
                println!("{name} no longer needs a second factor");
            }
            record_change(
                &cfg,
                &os_user(),
                "user.mfa_require",
                json!({ "user": name, "required": required }),
            )?;
        }
    }
    Ok(())
}
