//! Admin events from the command line: every change a command makes to
//! people, second factors, certificates, grants and requests, and every
//! audit operation, is appended to the audit trail and the new head signed.
//!
//! The command writes to the audit store directly (a running `pgward serve`
//! appends in its own transactions; the chain is extended under SQLite's
//! write lock, so both interleave safely).

use anyhow::bail;
use serde_json::Value;

use crate::audit::chain::SigningKey;
use crate::audit::event::Event;
use crate::audit::store::AuditStore;
use crate::config::Config;

/// The key for signing admin events' checkpoints: created only when no
/// checkpoint exists yet (a new key would orphan every old signature).
pub(crate) fn signing_key(config: &Config, store: &AuditStore) -> anyhow::Result<SigningKey> {
    let path = &config.audit.signing_key;
    if !path.exists() {
        let signed: bool =
            store
                .connection()
                .query_row("SELECT EXISTS (SELECT 1 FROM checkpoints)", [], |r| {
                    r.get(0)
                })?;
        if signed {
            bail!(
                "the audit signing key {} is missing but the store has checkpoints signed with it; restore the key",
                path.display()
            );
        }
    }
    Ok(SigningKey::load_or_create(path)?)
}

/// The operating-system user running the command, for admin events.
pub(crate) fn os_user() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

/// Appends an admin event and signs the new head.
pub(crate) fn record(
    config: &Config,
    store: &mut AuditStore,
    action: &str,
    detail: Value,
) -> anyhow::Result<()> {
    let key = signing_key(config, store)?;
    let mut event = [Event::admin(
        &config.audit.instance_name(),
        &os_user(),
        action,
        detail.to_string(),
    )];
    store.append(&mut event)?;
    store.checkpoint(&key)?;
    Ok(())
}

pub(crate) fn record_best_effort(config: &Config, action: &str, detail: Value) {
    let result = AuditStore::open(&config.audit.path)
        .map_err(anyhow::Error::from)
        .and_then(|mut store| record(config, &mut store, action, detail));
    if let Err(e) = result {
        eprintln!("note: this verification could not be recorded in the audit trail: {e:#}");
    }
}

/// Records a change a command has just made, as `actor` (the person the
/// command acted for; the operating-system user when it is the operator).
/// An error says the change stands but is not in the trail, so the caller
/// exits non-zero and the operator knows.
pub(crate) fn record_change(
    config: &Config,
    actor: &str,
    action: &'static str,
    detail: Value,
) -> anyhow::Result<()> {
    let change = crate::access::Change {
        action,
        detail,
        alert: false,
    };
    record_changes(config, actor, &[change]).map_err(|e| anyhow::anyhow!("{e:#} ({action})"))
}

/// Records the changes an access action made (grants, requests,
/// break-glass), with alerts where the change calls for one.
pub(crate) fn record_changes(
    config: &Config,
    actor: &str,
    changes: &[crate::access::Change],
) -> anyhow::Result<()> {
    let instance = config.audit.instance_name();
    let mut events: Vec<Event> = changes
        .iter()
        .flat_map(|c| {
            let mut c = c.clone();
            if let Value::Object(map) = &mut c.detail {
                map.entry("operator")
                    .or_insert_with(|| Value::String(os_user()));
            }
            c.events(&instance, actor)
        })
        .collect();
    let result = AuditStore::open(&config.audit.path)
        .map_err(anyhow::Error::from)
        .and_then(|mut store| {
            let key = signing_key(config, &store)?;
            store.append(&mut events)?;
            store.checkpoint(&key)?;
            Ok(())
        });
    result.map_err(|e| {
        anyhow::anyhow!("the change was made but could not be recorded in the audit trail: {e:#}")
    })
}
