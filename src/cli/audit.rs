//! `pgward audit …`: verify, export, follow and prune the audit trail, and
//! print the public key that lets anyone else verify it.
//!
//! These commands are for the compliance officer and the auditor as much
//! as for the DBA, so their output is plain: `verify` says `OK: …` or
//! `FAILED: …` naming the first bad event and exits 1 on failure; `export`
//! writes a file only once it is complete (mode 0600, since statement text
//! can hold patient data) and notes progress on stderr; `tail` prints one
//! line per event.
//!
//! Looking at the trail is itself audited: `export` and `verify` append an
//! `admin` event (`audit.export`, `audit.verify`) as the operating-system
//! user running the command, and sign a checkpoint; `prune` appends
//! `audit.prune` (see [`retention`](crate::audit::retention)), and its
//! `--dry-run` only reads. The one exception is a store that fails
//! verification: it is left exactly as found, for the investigation. The key is only ever created when the store has no
//! checkpoints yet — a new key would make every old signature fail.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use super::admin_event::{os_user, record, record_best_effort, signing_key};
use super::ConfigArg;
use crate::audit::chain::{read_public_key, SigningKey};
use crate::audit::event::{format_time, Event, Kind};
use crate::audit::export::{decision_str, export, filters_json, Format};
use crate::audit::retention::{self, Actor, Limits, Plan, PruneError, PRUNE_ACTION};
use crate::audit::store::{AuditStore, Filter, Stored, SELECT_INDEXED};
use crate::audit::verify::{verify_export, verify_store, Report};
use crate::config::Config;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain and the signed checkpoints of the audit store
    /// (or of an export with --export). Exits 1 naming the first bad event.
    Verify {
        /// Verify this `jsonl` export instead of the store.
        #[arg(long, value_name = "FILE")]
        export: Option<PathBuf>,
        /// The public key (64 hex digits, from `pgward audit public-key`);
        /// default: derived from the configured signing key.
        #[arg(long, value_name = "FILE")]
        public_key: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Write the events the filters select: jsonl (provable with
    /// `audit verify --export`), csv, or ocsf (OCSF 1.1.0 JSON lines).
    Export {
        #[arg(long, value_enum, default_value_t = FormatArg::Jsonl)]
        format: FormatArg,
        /// Write here instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        #[command(flatten)]
        filter: FilterArgs,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Show the latest events, one line each; --follow keeps printing new
    /// ones until interrupted.
    Tail {
        /// How many events to show first.
        #[arg(short = 'n', long = "lines", default_value_t = 20)]
        lines: usize,
        /// Keep watching for new events (every 500 ms) until Ctrl+C.
        #[arg(short = 'f', long)]
        follow: bool,
        #[command(flatten)]
        filter: FilterArgs,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Remove events older than the retention (default: audit.retention),
    /// through the last signed checkpoint before the cutoff, after
    /// verifying them; the rest of the trail still verifies.
    Prune {
        /// Remove events older than this: 6years, 18months, 400days (at
        /// least a day).
        #[arg(long, value_name = "DURATION", value_parser = parse_age, conflicts_with = "before")]
        older_than: Option<Duration>,
        /// Remove events before this time: RFC 3339 or a date (midnight
        /// UTC).
        #[arg(long, value_name = "TIME", value_parser = parse_since)]
        before: Option<i64>,
        /// Say what would be removed; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print the public key that verifies the checkpoints (64 hex digits):
    /// give it to auditors with the exports.
    PublicKey {
        /// Write it to this file instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum FormatArg {
    Jsonl,
    Csv,
    Ocsf,
}

impl From<FormatArg> for Format {
    fn from(f: FormatArg) -> Format {
        match f {
            FormatArg::Jsonl => Format::Jsonl,
            FormatArg::Csv => Format::Csv,
            FormatArg::Ocsf => Format::Ocsf,
        }
    }
}

/// Which events: every filter given must match.
#[derive(Args, Clone, Default)]
pub struct FilterArgs {
    /// At or after this time: RFC 3339 (2026-03-01T08:00:00Z) or a date
    /// (from midnight UTC).
    #[arg(long, value_parser = parse_since)]
    since: Option<i64>,
    /// Before this time: RFC 3339, or a date (through the end of that day,
    /// UTC).
    #[arg(long, value_parser = parse_until)]
    until: Option<i64>,
    /// The person (pgward user name).
    #[arg(long)]
    user: Option<String>,
    /// The database connected to.
    #[arg(long, alias = "db")]
    database: Option<String>,
    /// A table the statement used: schema.table or just table.
    #[arg(long)]
    table: Option<String>,
    /// Statement class.
    #[arg(long, value_parser = ["read", "write", "ddl", "admin", "other"])]
    class: Option<String>,
    /// Event kind.
    #[arg(long, value_parser = ["statement", "login", "session_start", "session_end", "admin", "alert"])]
    kind: Option<String>,
}

impl FilterArgs {
    fn filter(&self) -> Filter {
        Filter {
            since_us: self.since,
            until_us: self.until,
            user: self.user.clone(),
            database: self.database.clone(),
            table: self.table.clone(),
            class: self.class.clone(),
            kind: self.kind.clone(),
            after_id: None,
        }
    }
}

fn parse_since(s: &str) -> Result<i64, String> {
    parse_time(s, false)
}

fn parse_age(s: &str) -> Result<Duration, String> {
    retention::parse_age(s)
}

fn parse_until(s: &str) -> Result<i64, String> {
    parse_time(s, true)
}

/// RFC 3339 (`2026-03-01T08:00:00.5+01:00`, `Z`, a space for `T`) or a
/// bare date, as microseconds since the epoch. A bare date is midnight
/// UTC, or with `end_of_day` the midnight after it.
fn parse_time(s: &str, end_of_day: bool) -> Result<i64, String> {
    let bad = || {
        format!(
            "expected an RFC 3339 time (2026-03-01T08:00:00Z) or a date (2026-03-01), got {s:?}"
        )
    };
    let s = s.trim();
    let b = s.as_bytes();
    let num = |from: usize, to: usize| -> Result<u32, String> {
        match s.get(from..to) {
            Some(t) if !t.is_empty() && t.bytes().all(|c| c.is_ascii_digit()) => {
                t.parse().map_err(|_| bad())
            }
            _ => Err(bad()),
        }
    };
    let at = |i: usize, chars: &[u8]| b.get(i).is_some_and(|c| chars.contains(c));
    if !(at(4, b"-") && at(7, b"-")) {
        return Err(bad());
    }
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let month = time::Month::try_from(month as u8).map_err(|_| bad())?;
    let date = time::Date::from_calendar_date(year as i32, month, day as u8).map_err(|_| bad())?;
    let micros = |t: time::OffsetDateTime| (t.unix_timestamp_nanos() / 1000) as i64;
    if b.len() == 10 {
        let date = match end_of_day {
            true => date.next_day().ok_or_else(bad)?,
            false => date,
        };
        return Ok(micros(date.midnight().assume_utc()));
    }
    if !(at(10, b"Tt ") && at(13, b":") && at(16, b":")) {
        return Err(bad());
    }
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    let mut i = 19;
    let mut micro = 0u32;
    if at(i, b".") {
        let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return Err(bad());
        }
        let frac = &s[i + 1..i + 1 + digits.min(6)];
        micro = frac.parse::<u32>().map_err(|_| bad())? * 10u32.pow(6 - frac.len() as u32);
        i += 1 + digits;
    }
    let offset = match &s[i..] {
        "Z" | "z" => 0,
        zone if zone.len() == 6 && at(i, b"+-") && at(i + 3, b":") => {
            let secs = (num(i + 1, i + 3)? * 3600 + num(i + 4, i + 6)? * 60) as i32;
            if at(i, b"-") {
                -secs
            } else {
                secs
            }
        }
        _ => return Err(bad()),
    };
    let time = time::Time::from_hms_micro(hour as u8, minute as u8, second as u8, micro)
        .map_err(|_| bad())?;
    let offset = time::UtcOffset::from_whole_seconds(offset).map_err(|_| bad())?;
    Ok(micros(
        time::PrimitiveDateTime::new(date, time).assume_offset(offset),
    ))
}

pub fn run(cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::Verify {
            export,
            public_key,
            config,
        } => match export {
            None => verify_the_store(&config.config, public_key.as_deref()),
            Some(file) => verify_a_file(&config.config, &file, public_key.as_deref()),
        },
        AuditCommand::Export {
            format,
            out,
            filter,
            config,
        } => export_events(
            &config.config,
            format.into(),
            out.as_deref(),
            &filter.filter(),
        ),
        AuditCommand::Tail {
            lines,
            follow,
            filter,
            config,
        } => tail(&config.config, lines, follow, &filter.filter()),
        AuditCommand::Prune {
            older_than,
            before,
            dry_run,
            config,
        } => prune_events(&config.config, older_than, before, dry_run),
        AuditCommand::PublicKey { out, config } => public_key(&config.config, out.as_deref()),
    }
}

fn load(path: &Path) -> anyhow::Result<Config> {
    Config::load(path).with_context(|| format!("loading {}", path.display()))
}

/// The configured signing key, which must already exist.
fn existing_key(config: &Config) -> anyhow::Result<SigningKey> {
    let path = &config.audit.signing_key;
    if !path.exists() {
        bail!(
            "there is no audit signing key at {} (pgward creates it when it first stores an event); pass --public-key FILE to verify with a key you were given",
            path.display()
        );
    }
    SigningKey::load_or_create(path)
        .with_context(|| "pass --public-key FILE to verify without the signing key".to_string())
}

fn verify_the_store(config_path: &Path, public_key: Option<&Path>) -> anyhow::Result<()> {
    let config = load(config_path)?;
    let key = match public_key {
        Some(p) => read_public_key(p)?,
        None => existing_key(&config)?.public_key().to_vec(),
    };
    let path = &config.audit.path;
    let store = AuditStore::open_read_only(path)?;
    let report = verify_store(&store, &key)
        .with_context(|| format!("reading the audit store {}", path.display()))?;
    drop(store);
    match report {
        Report::Verified(s) => {
            println!("OK: {}: {s}", path.display());
            record_best_effort(
                &config,
                "audit.verify",
                json!({ "target": "store", "result": "ok", "events": s.events, "last_id": s.last_id }),
            );
            Ok(())
        }
        Report::Failed(f) => {
            println!("FAILED: {}: {f}", path.display());
            // Left as found: no audit.verify event on a damaged store.
            bail!("the audit trail failed verification")
        }
    }
}

fn verify_a_file(config_path: &Path, file: &Path, public_key: Option<&Path>) -> anyhow::Result<()> {
    // An auditor with only the export and the public key needs no config.
    let (config, key) = match public_key {
        Some(p) => (Config::load(config_path).ok(), read_public_key(p)?),
        None => {
            let config = load(config_path)?;
            let key = existing_key(&config)?.public_key().to_vec();
            (Some(config), key)
        }
    };
    let input = File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let report = verify_export(BufReader::new(input), &key)
        .with_context(|| format!("reading {}", file.display()))?;
    let detail = |result: &str| json!({ "target": file.display().to_string(), "result": result });
    match report {
        Report::Verified(s) => {
            println!("OK: {}: {s}", file.display());
            if let Some(config) = &config {
                record_best_effort(config, "audit.verify", detail("ok"));
            }
            Ok(())
        }
        Report::Failed(f) => {
            println!("FAILED: {}: {f}", file.display());
            if let Some(config) = &config {
                record_best_effort(config, "audit.verify", detail(&f.message));
            }
            bail!("the export failed verification")
        }
    }
}

fn export_events(
    config_path: &Path,
    format: Format,
    out: Option<&Path>,
    filter: &Filter,
) -> anyhow::Result<()> {
    let config = load(config_path)?;
    let path = &config.audit.path;
    if !path.exists() {
        bail!("there is no audit store at {}", path.display());
    }
    let mut store = AuditStore::open(path)?;
    let key = signing_key(&config, &store)?;
    // Sign the tail first, so a jsonl export is proven to its last event.
    store.checkpoint(&key)?;
    let stats = match out {
        Some(out) => {
            let dir = match out.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            // Complete or not at all; NamedTempFile is mode 0600.
            let tmp = tempfile::NamedTempFile::new_in(dir)
                .with_context(|| format!("creating a file in {}", dir.display()))?;
            let mut w = BufWriter::new(tmp.as_file());
            let mut progress = |n: u64| eprintln!("{n} events read…");
            let stats = export(&store, filter, format, &mut w, &mut progress)?;
            w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            tmp.persist(out)
                .with_context(|| format!("writing {}", out.display()))?;
            stats
        }
        None => {
            let stdout = std::io::stdout();
            let mut w = BufWriter::new(stdout.lock());
            export(&store, filter, format, &mut w, &mut |_| {})?
        }
    };
    let target = out.map_or("standard output".to_string(), |p| p.display().to_string());
    let detail = json!({
        "format": format.name(),
        "filters": filters_json(filter),
        "events": stats.events,
        "first_id": stats.first_id,
        "last_id": stats.last_id,
        "out": target,
    });
    if let Err(e) = record(&config, &mut store, "audit.export", detail) {
        if let Some(out) = out {
            let _ = std::fs::remove_file(out);
        }
        return Err(e.context("recording the export in the audit trail (export removed)"));
    }
    if out.is_some() {
        eprintln!(
            "exported {} event(s) as {} to {target}",
            stats.events,
            format.name()
        );
    }
    Ok(())
}

/// `audit prune`. Pruning is audited by the `audit.prune` event it appends
/// with its first deletion (or, when nothing was old enough, on its own); a
/// dry run only reads.
fn prune_events(
    config_path: &Path,
    older_than: Option<Duration>,
    before: Option<i64>,
    dry_run: bool,
) -> anyhow::Result<()> {
    let config = load(config_path)?;
    let cutoff_us = match (before, older_than.or(config.audit.retention)) {
        (Some(t), _) => t,
        (None, Some(age)) => retention::cutoff(crate::audit::event::now_us(), age),
        (None, None) => bail!(
            "audit.retention is `forever` in {}; pass --older-than or --before",
            config_path.display()
        ),
    };
    let newest = retention::cutoff(crate::audit::event::now_us(), retention::MIN_RETENTION);
    if cutoff_us > newest {
        bail!(
            "--before {} is less than {} ago: pgward never prunes events that recent (a typo must not empty the trail)",
            format_time(cutoff_us),
            humantime::format_duration(retention::MIN_RETENTION)
        );
    }
    let cutoff = format_time(cutoff_us);
    let path = &config.audit.path;
    if !path.exists() {
        bail!("there is no audit store at {}", path.display());
    }
    if dry_run {
        let store = AuditStore::open_read_only(path)?;
        let key = existing_key(&config)?;
        let report = retention::plan(&store, key.public_key(), cutoff_us, Limits::ALL, &|| false)
            .with_context(|| format!("reading the audit store {}", path.display()))?;
        let plan = match report {
            Report::Verified(p) => p,
            Report::Failed(f) => {
                println!("FAILED: {}: {f}", path.display());
                bail!("the audit trail fails verification, so it would not be pruned; run `pgward audit verify`")
            }
        };
        match plan.removes() {
            0 => println!("would remove nothing: no signed checkpoint covers events older than {cutoff}"),
            n => println!(
                "would remove {n} event(s), ids {}..={}, older than {cutoff}; the trail would start after event {}",
                plan.base.0 + 1,
                plan.boundary(),
                plan.boundary()
            ),
        }
        print_kept(&plan);
        return Ok(());
    }

    let mut store = AuditStore::open(path)?;
    let key = signing_key(&config, &store)?;
    let user = os_user();
    let instance = config.audit.instance_name();
    let by = Actor {
        instance: &instance,
        user: &user,
    };
    let pruned = match retention::prune(&mut store, &key, cutoff_us, by, Limits::ALL, &|| false) {
        Ok(p) => p,
        Err(PruneError::Tampered(f)) => {
            println!("FAILED: {}: {f}", path.display());
            // Left as found, like `verify` leaves a damaged store.
            bail!("the audit trail fails verification, so nothing was pruned (the evidence is kept); run `pgward audit verify`")
        }
        Err(e) => return Err(e.into()),
    };
    if pruned.removed == 0 {
        let detail = json!({
            "removed": 0,
            "from_base": pruned.base,
            "base": pruned.base,
            "cutoff": cutoff,
        });
        record(&config, &mut store, PRUNE_ACTION, detail)?;
        println!("removed nothing: no signed checkpoint covers events older than {cutoff}");
    } else {
        println!(
            "removed {} event(s), ids {}..={}, older than {cutoff}; the trail now starts after event {}, whose signed checkpoint is kept",
            pruned.removed,
            pruned.plan.base.0 + 1,
            pruned.base,
            pruned.base
        );
        if pruned.base < pruned.plan.boundary() {
            println!(
                "note: another prune took over at event {}; run again to finish",
                pruned.base
            );
        }
    }
    print_kept(&pruned.plan);
    Ok(())
}

fn print_kept(plan: &Plan) {
    if plan.older_unsigned > 0 {
        println!(
            "{} older event(s) after event {} are kept: a prune must end at a signed checkpoint, and the next one also covers newer events (or is not signed yet)",
            plan.older_unsigned,
            plan.boundary()
        );
    }
}

fn public_key(config_path: &Path, out: Option<&Path>) -> anyhow::Result<()> {
    let config = load(config_path)?;
    let key = hex::encode(existing_key(&config)?.public_key());
    match out {
        Some(path) => {
            std::fs::write(path, format!("{key}\n"))
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote the audit public key to {}", path.display());
        }
        None => println!("{key}"),
    }
    Ok(())
}

/// The ids of the last `n` events `filter` selects, oldest first.
fn last_matches(store: &AuditStore, filter: &Filter, n: usize) -> anyhow::Result<Vec<u64>> {
    let mut ids = Vec::new();
    if n == 0 {
        return Ok(ids);
    }
    // Time marks bound where events after `since` can start.
    let from = match filter.since_us {
        Some(since) => match store.first_id_since(since)? {
            Some(id) => id,
            None => return Ok(ids),
        },
        None => 0,
    };
    let mut stmt = store.connection().prepare(&format!(
        "{SELECT_INDEXED}
             WHERE id >= ?7 AND (?1 IS NULL OR time_us >= ?1) AND (?2 IS NULL OR time_us < ?2)
               AND (?3 IS NULL OR user = ?3) AND (?4 IS NULL OR database = ?4)
               AND (?5 IS NULL OR class = ?5) AND (?6 IS NULL OR kind = ?6)
             ORDER BY id DESC"
    ))?;
    let mut rows = stmt.query(rusqlite::params![
        filter.since_us,
        filter.until_us,
        filter.user,
        filter.database,
        filter.class,
        filter.kind,
        from.min(i64::MAX as u64) as i64
    ])?;
    while let Some(r) = rows.next()? {
        let s = Stored::from_indexed_row(r)?;
        if filter.matches(&s) {
            ids.push(s.id);
            if ids.len() == n {
                break;
            }
        }
    }
    ids.reverse();
    Ok(ids)
}

fn tail(config_path: &Path, n: usize, follow: bool, filter: &Filter) -> anyhow::Result<()> {
    let config = load(config_path)?;
    let store = AuditStore::open_read_only(&config.audit.path)?;
    let (mut last, _) = store.head()?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let result = (|| -> anyhow::Result<()> {
        let ids = last_matches(&store, filter, n)?;
        if let (Some(&first), Some(&newest)) = (ids.first(), ids.last()) {
            store.scan(first, Some(newest), |s| -> anyhow::Result<()> {
                if filter.matches(&s) {
                    writeln!(out, "{}", describe(&s))?;
                }
                Ok(())
            })?;
            last = last.max(newest);
        }
        out.flush()?;
        if !follow {
            return Ok(());
        }
        loop {
            std::thread::sleep(Duration::from_millis(500));
            store.scan(last + 1, None, |s| -> anyhow::Result<()> {
                last = s.id;
                if filter.matches(&s) {
                    writeln!(out, "{}", describe(&s))?;
                }
                Ok(())
            })?;
            out.flush()?;
        }
    })();
    match result {
        // `pgward audit tail | head` is not an error.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// Collapses whitespace and cuts to `max` characters.
fn short(text: &str, max: usize) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    let joined = words.join(" ");
    match joined.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &joined[..cut]),
        None => joined,
    }
}

/// One human-readable line: time, id, kind, user@database, what happened.
fn describe(s: &Stored) -> String {
    let Ok(e) = Event::decode(&s.body) else {
        return format!(
            "{}  #{}  {}  (unreadable event body)",
            format_time(s.time_us),
            s.id,
            s.kind
        );
    };
    let who = match (e.user(), e.database()) {
        (Some(u), Some(d)) => format!("{u}@{d}"),
        (Some(u), None) => u.to_string(),
        (None, Some(d)) => format!("@{d}"),
        (None, None) => "-".to_string(),
    };
    let mut parts = vec![
        format_time(e.time_us),
        format!("#{}", e.id),
        e.kind.as_str().to_string(),
        who,
    ];
    let mut push = |p: Option<String>| {
        if let Some(p) = p.filter(|p| !p.is_empty()) {
            parts.push(p);
        }
    };
    match e.kind {
        Kind::Statement => {
            push(e.decision.map(|d| decision_str(d).to_string()));
            push(match (&e.sqlstate, e.rows) {
                (Some(code), _) => Some(format!("SQLSTATE {code}")),
                (None, Some(rows)) => Some(format!("rows={rows}")),
                _ => None,
            });
            push(e.text.as_deref().map(|t| short(t, 80)));
        }
        Kind::Login | Kind::SessionEnd => push(e.outcome.clone()),
        Kind::SessionStart => {
            let w = e.who.as_deref();
            push(w.and_then(|w| w.client_addr.clone()));
            push(w.and_then(|w| w.application_name.clone()));
        }
        Kind::Admin | Kind::Alert => {
            push(e.action.clone());
            push(e.detail.as_deref().map(|d| short(d, 80)));
        }
    }
    parts.join("  ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_times_parse_as_rfc3339_or_dates() {
        let t = |s: &str| parse_time(s, false);
        assert_eq!(t("2023-11-14T22:13:20Z"), Ok(1_700_000_000_000_000));
        assert_eq!(t("2023-11-14 22:13:20.5z"), Ok(1_700_000_000_500_000));
        assert_eq!(
            t("2023-11-14T23:13:20.000001+01:00"),
            Ok(1_700_000_000_000_001)
        );
        assert_eq!(
            t("2023-11-14T21:13:20.1234567-01:00"),
            Ok(1_700_000_000_123_456)
        );
        assert_eq!(t("2023-11-14"), Ok(1_699_920_000_000_000));
        assert_eq!(parse_time("2023-11-14", true), Ok(1_700_006_400_000_000));
        for bad in [
            "2023-11-14T22:13:20",
            "2023-13-01",
            "2023-02-30",
            "yesterday",
            "2023-11-14T25:00:00Z",
            "2023-11-14T22:13:20.Z",
            "2023-11-14T22:13:20+1:00",
            "",
        ] {
            assert!(t(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn audit_tail_lines_are_short_and_readable() {
        let mut e = crate::audit::verify::tests::statement(3);
        e.id = 4;
        e.text =
            Some(("SELECT   name\n FROM patients WHERE ".to_string() + &"x".repeat(100)).into());
        let s = Stored {
            id: 4,
            time_us: e.time_us,
            kind: "statement".into(),
            user: None,
            database: None,
            class: None,
            relations: None,
            body: e.encode(),
            hash: Vec::new(),
        };
        let line = describe(&s);
        assert!(
            line.starts_with("2023-11-14T22:13:23.000000Z  #4  statement  ann@clinic  rewritten  rows=1  SELECT name FROM patients WHERE xxx"),
            "{line}"
        );
        assert!(line.ends_with('…'), "{line}");
        assert_eq!(short("a  b", 80), "a b");
    }
}
