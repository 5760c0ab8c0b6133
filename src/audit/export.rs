//! Exports of the audit trail: `jsonl` (provable), `csv` and `ocsf`.
//!
//! An auditor rarely wants the whole trail, but a filtered extract is only
//! worth something if it can be shown to be complete and unaltered without
//! access to the store. The `jsonl` format does that with the chain
//! itself: every event in the covered range appears either verbatim (its
//! stored bytes, so each line is an ordinary JSON event for log tools) or
//! as its SHA-256 digest in a skip line, which is exactly what the chain
//! links. Signed checkpoint lines sit right after the event they cover, so
//! [`verify_export`](super::verify::verify_export) can recompute the chain
//! from the header's `prev` and check each signature without the store.
//!
//! ```text
//! {"pgward_export":1,"first_id":41,"prev":"<hash of event 40>","filters":{"user":"ann"}}
//! {"pgward_checkpoint":{"last_id":40,…}}      authenticates prev
//! {"id":41,…}                                 a matching event, verbatim
//! {"pgward_skip":"<digest 42><digest 43>"}    events that did not match
//! {"pgward_checkpoint":{"last_id":43,…}}
//! ```
//!
//! The range starts just after the last checkpoint before the first
//! matching event (or at the chain base) and ends at the last stored event.
//! The export recomputes the chain as it goes and refuses to continue past
//! an event whose hash does not match, so a damaged store never yields an
//! export that looks sound. `csv` and `ocsf` are conveniences for
//! spreadsheets and SIEMs and prove nothing. CSV cells are quoted per
//! RFC 4180 but not defused against spreadsheet formulas: changing the
//! statement text of an audit record would be worse than the risk.
//!
//! Everything streams: events are read with a cursor and written one at a
//! time, and at most 1024 digests are held before a skip line is written.

use std::io::Write;

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::chain::{link, Checkpoint, Hash};
use super::event::{format_time, Decision, Event};
use super::ocsf;
use super::store::{
    digest, AuditStore, AuditStoreError, Filter, Stored, SELECT_EVENTS, SELECT_INDEXED,
};

pub(crate) const HEADER_PREFIX: &str = "{\"pgward_export\":";
pub(crate) const SKIP_PREFIX: &str = "{\"pgward_skip\":";
pub(crate) const CHECKPOINT_PREFIX: &str = "{\"pgward_checkpoint\":";

/// Digests per skip line, at most.
pub const MAX_SKIP: usize = 1024;

/// The progress callback is called after this many events read.
pub const PROGRESS_EVERY: u64 = 100_000;

/// The first line of a `jsonl` export (fields in this order).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Header {
    pub pgward_export: u32,
    pub first_id: u64,
    /// Hex hash of event `first_id - 1`, the chain's starting point.
    pub prev: String,
    #[serde(default)]
    pub filters: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SkipLine {
    pub pgward_skip: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CheckpointLine {
    pub pgward_checkpoint: Checkpoint,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Provable: events verbatim, digests of the rest, checkpoints.
    Jsonl,
    Csv,
    /// OCSF 1.1.0 JSON lines (see [`ocsf`]).
    Ocsf,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Jsonl => "jsonl",
            Format::Csv => "csv",
            Format::Ocsf => "ocsf",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] AuditStoreError),
    #[error("writing the export: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "the audit store fails verification at event {event}: {message}; run `pgward audit verify`"
    )]
    Broken { event: u64, message: String },
}

impl From<rusqlite::Error> for ExportError {
    fn from(e: rusqlite::Error) -> Self {
        ExportError::Store(AuditStoreError::Sqlite(e))
    }
}

/// What an export wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportStats {
    /// Events written (those matching the filter).
    pub events: u64,
    /// Events read.
    pub scanned: u64,
    /// The id range read (`first_id > last_id` when empty).
    pub first_id: u64,
    pub last_id: u64,
}

/// Writes the events `filter` selects to `out` in `format`. `progress`
/// gets the number of events read every [`PROGRESS_EVERY`].
pub fn export(
    store: &AuditStore,
    filter: &Filter,
    format: Format,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(u64),
) -> Result<ExportStats, ExportError> {
    let conn = store.connection();
    // One snapshot for the whole export while the proxy keeps appending.
    let _snapshot = conn.unchecked_transaction()?;
    let stats = match format {
        Format::Jsonl => jsonl(store, filter, out, progress)?,
        Format::Csv => {
            writeln!(out, "{}", CSV_COLUMNS.join(","))?;
            each_match(store, filter, progress, |e, stored| {
                csv_row(out, e, &stored.hash)?;
                Ok(())
            })?
        }
        Format::Ocsf => each_match(store, filter, progress, |e, stored| {
            serde_json::to_writer(&mut *out, &ocsf::record(e, &stored.body, &stored.hash))
                .map_err(std::io::Error::from)?;
            out.write_all(b"\n")?;
            Ok(())
        })?,
    };
    out.flush()?;
    Ok(stats)
}

/// The filter as the header (and admin events) record it.
pub fn filters_json(f: &Filter) -> Map<String, Value> {
    let mut m = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            m.insert(k.to_string(), v);
        }
    };
    put("since", f.since_us.map(|t| format_time(t).into()));
    put("until", f.until_us.map(|t| format_time(t).into()));
    put("user", f.user.clone().map(Value::from));
    put("database", f.database.clone().map(Value::from));
    put("table", f.table.clone().map(Value::from));
    put("class", f.class.clone().map(Value::from));
    put("kind", f.kind.clone().map(Value::from));
    put("after_id", f.after_id.map(Value::from));
    m
}

/// The first id worth reading for `filter`, and the last stored id.
fn range(store: &AuditStore, filter: &Filter) -> Result<(u64, u64), ExportError> {
    let (base_id, _) = store.base()?;
    let (last_id, _) = store.head()?;
    let mut from = base_id + 1;
    if let Some(after) = filter.after_id {
        from = from.max(after.saturating_add(1));
    }
    if let Some(since) = filter.since_us {
        // Nothing at or after `since`: nothing can match.
        let first = store
            .first_id_since(since)?
            .unwrap_or(last_id.saturating_add(1));
        from = from.max(first);
    }
    Ok((from, last_id))
}

fn to_i64(id: u64) -> i64 {
    id.min(i64::MAX as u64) as i64
}

/// Calls `f` for every event in `from..=to` that `filter` selects (the
/// simple conditions in SQL, the rest with [`Filter::matches`]).
fn each_match(
    store: &AuditStore,
    filter: &Filter,
    progress: &mut dyn FnMut(u64),
    mut f: impl FnMut(&Event, &Stored) -> Result<(), ExportError>,
) -> Result<ExportStats, ExportError> {
    let (from, to) = range(store, filter)?;
    let mut stats = ExportStats {
        first_id: from,
        last_id: to,
        ..ExportStats::default()
    };
    let mut stmt = store
        .connection()
        .prepare(&format!("{SELECT_EVENTS} {IN_RANGE_FILTERED}"))?;
    let mut rows = stmt.query(rusqlite::params_from_iter(range_params(filter, from, to)))?;
    while let Some(r) = rows.next()? {
        let s = Stored::from_row(r)?;
        stats.scanned += 1;
        if stats.scanned % PROGRESS_EVERY == 0 {
            progress(stats.scanned);
        }
        if !filter.matches(&s) {
            continue;
        }
        let event = Event::decode(&s.body).map_err(|e| ExportError::Broken {
            event: s.id,
            message: format!("its body is not a valid event ({e})"),
        })?;
        f(&event, &s)?;
        stats.events += 1;
    }
    Ok(stats)
}

fn checkpoint(r: &Row<'_>) -> rusqlite::Result<Checkpoint> {
    Ok(Checkpoint {
        last_id: r.get::<_, i64>(0)? as u64,
        head: r.get(1)?,
        time_us: r.get(2)?,
        signature: r.get(3)?,
    })
}

fn write_checkpoint(out: &mut dyn Write, cp: &Checkpoint) -> std::io::Result<()> {
    let line = CheckpointLine {
        pgward_checkpoint: cp.clone(),
    };
    serde_json::to_writer(&mut *out, &line).map_err(std::io::Error::from)?;
    out.write_all(b"\n")
}

/// Digests waiting to be written as one skip line.
struct Skips {
    digests: Vec<u8>,
}

impl Skips {
    fn push(&mut self, out: &mut dyn Write, d: &Hash) -> std::io::Result<()> {
        self.digests.extend_from_slice(d);
        if self.digests.len() >= MAX_SKIP * 32 {
            self.flush(out)?;
        }
        Ok(())
    }

    fn flush(&mut self, out: &mut dyn Write) -> std::io::Result<()> {
        if self.digests.is_empty() {
            return Ok(());
        }
        out.write_all(SKIP_PREFIX.as_bytes())?;
        out.write_all(b"\"")?;
        out.write_all(hex::encode(&self.digests).as_bytes())?;
        out.write_all(b"\"}\n")?;
        self.digests.clear();
        Ok(())
    }
}

/// Events with an id in `?1..=?2` that pass the filter's indexed columns
/// in SQL ([`Filter::matches`] decides the rest); see [`range_params`].
const IN_RANGE_FILTERED: &str = "WHERE id >= ?1 AND id <= ?2
   AND (?3 IS NULL OR time_us < ?3) AND (?4 IS NULL OR user = ?4)
   AND (?5 IS NULL OR database = ?5) AND (?6 IS NULL OR class = ?6)
   AND (?7 IS NULL OR kind = ?7)
 ORDER BY id";

/// The parameters of [`IN_RANGE_FILTERED`].
fn range_params(filter: &Filter, from: u64, to: u64) -> [Box<dyn rusqlite::ToSql + '_>; 7] {
    [
        Box::new(to_i64(from)),
        Box::new(to_i64(to)),
        Box::new(filter.until_us),
        Box::new(filter.user.as_deref()),
        Box::new(filter.database.as_deref()),
        Box::new(filter.class.as_deref()),
        Box::new(filter.kind.as_deref()),
    ]
}

fn first_match(
    conn: &Connection,
    filter: &Filter,
    from: u64,
    to: u64,
) -> Result<Option<u64>, ExportError> {
    // Indexed columns only: no need to read bodies to find the start.
    let mut stmt = conn.prepare(&format!("{SELECT_INDEXED} {IN_RANGE_FILTERED}"))?;
    let mut rows = stmt.query(rusqlite::params_from_iter(range_params(filter, from, to)))?;
    while let Some(r) = rows.next()? {
        let s = Stored::from_indexed_row(r)?;
        if filter.matches(&s) {
            return Ok(Some(s.id));
        }
    }
    Ok(None)
}

fn jsonl(
    store: &AuditStore,
    filter: &Filter,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(u64),
) -> Result<ExportStats, ExportError> {
    let conn = store.connection();
    let (base_id, base_hash) = store.base()?;
    let (from, last_id) = range(store, filter)?;
    let first = first_match(conn, filter, from, last_id)?.unwrap_or(last_id.saturating_add(1));
    // The last checkpoint before the first match anchors `prev`.
    let lead: Option<Checkpoint> = conn
        .query_row(
            "SELECT last_id, head, time_us, signature FROM checkpoints
             WHERE last_id >= ?1 AND last_id < ?2 ORDER BY last_id DESC LIMIT 1",
            params![to_i64(base_id), to_i64(first)],
            checkpoint,
        )
        .optional()?;
    let (mut id, mut hash) = match &lead {
        Some(cp) => {
            let head: Hash = cp
                .head
                .clone()
                .try_into()
                .map_err(|_| ExportError::Broken {
                    event: cp.last_id,
                    message: "its checkpoint has a malformed head".into(),
                })?;
            (cp.last_id, head)
        }
        None => (base_id, base_hash),
    };
    let header = Header {
        pgward_export: 1,
        first_id: id + 1,
        prev: hex::encode(hash),
        filters: filters_json(filter),
    };
    serde_json::to_writer(&mut *out, &header).map_err(std::io::Error::from)?;
    out.write_all(b"\n")?;
    if let Some(cp) = &lead {
        write_checkpoint(out, cp)?;
    }
    let mut stats = ExportStats {
        first_id: id + 1,
        last_id,
        ..ExportStats::default()
    };

    let mut cp_stmt = conn.prepare(
        "SELECT last_id, head, time_us, signature FROM checkpoints
         WHERE last_id > ?1 AND last_id <= ?2 ORDER BY last_id",
    )?;
    let mut cp_rows = cp_stmt.query(params![to_i64(id), to_i64(last_id)])?;
    let mut next_cp = match cp_rows.next()? {
        Some(r) => Some(checkpoint(r)?),
        None => None,
    };
    let mut skips = Skips {
        digests: Vec::with_capacity(MAX_SKIP * 32),
    };
    let mut stmt = conn.prepare(&format!(
        "{SELECT_EVENTS} WHERE id > ?1 AND id <= ?2 ORDER BY id"
    ))?;
    let mut rows = stmt.query(params![to_i64(id), to_i64(last_id)])?;
    while let Some(r) = rows.next()? {
        let e = Stored::from_row(r)?;
        if e.id != id + 1 {
            return Err(ExportError::Broken {
                event: id + 1,
                message: "the event is missing".into(),
            });
        }
        let d = digest(&e.body);
        let h = link(&hash, &d);
        if e.hash.as_slice() != h.as_slice() {
            return Err(ExportError::Broken {
                event: e.id,
                message: "its body does not match its hash".into(),
            });
        }
        (id, hash) = (e.id, h);
        stats.scanned += 1;
        if stats.scanned % PROGRESS_EVERY == 0 {
            progress(stats.scanned);
        }
        if filter.matches(&e) {
            skips.flush(out)?;
            out.write_all(&e.body)?;
            out.write_all(b"\n")?;
            stats.events += 1;
        } else {
            skips.push(out, &d)?;
        }
        while let Some(cp) = next_cp.take() {
            if cp.last_id > id {
                next_cp = Some(cp);
                break;
            }
            if cp.last_id != id || cp.head.as_slice() != hash.as_slice() {
                return Err(ExportError::Broken {
                    event: cp.last_id,
                    message: "the chain does not match the checkpoint signed for it".into(),
                });
            }
            skips.flush(out)?;
            write_checkpoint(out, &cp)?;
            next_cp = match cp_rows.next()? {
                Some(r) => Some(checkpoint(r)?),
                None => None,
            };
        }
    }
    skips.flush(out)?;
    if id != last_id {
        return Err(ExportError::Broken {
            event: id + 1,
            message: "the event is missing".into(),
        });
    }
    Ok(stats)
}

/// The CSV columns, in order.
pub const CSV_COLUMNS: [&str; 24] = [
    "id",
    "time",
    "kind",
    "instance",
    "session",
    "user",
    "role",
    "client_addr",
    "application_name",
    "database",
    "class",
    "decision",
    "reason",
    "sqlstate",
    "rows",
    "bytes",
    "duration_us",
    "relations",
    "masks",
    "filters",
    "outcome",
    "action",
    "text",
    "hash",
];

pub fn decision_str(d: Decision) -> &'static str {
    match d {
        Decision::Allowed => "allowed",
        Decision::Rewritten => "rewritten",
        Decision::Denied => "denied",
    }
}

/// One RFC 4180 field: quoted when it holds a comma, quote, line break or
/// surrounding space.
pub fn csv_field(s: &str) -> std::borrow::Cow<'_, str> {
    let needs = s.contains([',', '"', '\n', '\r'])
        || s.starts_with(char::is_whitespace)
        || s.ends_with(char::is_whitespace);
    match needs {
        true => format!("\"{}\"", s.replace('"', "\"\"")).into(),
        false => s.into(),
    }
}

fn csv_row(out: &mut dyn Write, e: &Event, hash: &[u8]) -> std::io::Result<()> {
    let who = e.who.as_deref();
    let opt = |s: Option<&String>| s.cloned().unwrap_or_default();
    let num = |n: Option<u64>| n.map(|n| n.to_string()).unwrap_or_default();
    let cells: [String; 24] = [
        e.id.to_string(),
        format_time(e.time_us),
        e.kind.as_str().to_string(),
        e.instance.to_string(),
        num(who.and_then(|w| w.session)),
        opt(who.and_then(|w| w.user.as_ref())),
        opt(who.and_then(|w| w.role.as_ref())),
        opt(who.and_then(|w| w.client_addr.as_ref())),
        opt(who.and_then(|w| w.application_name.as_ref())),
        opt(who.and_then(|w| w.database.as_ref())),
        opt(e.class.as_ref()),
        e.decision.map(decision_str).unwrap_or_default().to_string(),
        opt(e.reason.as_ref()),
        e.sqlstate.as_deref().unwrap_or_default().to_string(),
        num(e.rows),
        num(e.bytes),
        num(e.duration_us),
        e.relations.join(" "),
        e.masks.join("; "),
        e.filters.join("; "),
        opt(e.outcome.as_ref()),
        opt(e.action.as_ref()),
        e.text.as_deref().unwrap_or_default().to_string(),
        hex::encode(hash),
    ];
    for (i, cell) in cells.iter().enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        out.write_all(csv_field(cell).as_bytes())?;
    }
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::SigningKey;
    use crate::audit::event::Kind;
    use crate::audit::verify::tests::{fifty, statement};
    use crate::audit::verify::{verify_export, Report};

    fn run(store: &AuditStore, filter: &Filter, format: Format) -> (Vec<u8>, ExportStats) {
        let mut out = Vec::new();
        let stats = export(store, filter, format, &mut out, &mut |_| {}).unwrap();
        (out, stats)
    }

    fn lines(out: &[u8]) -> Vec<String> {
        String::from_utf8(out.to_vec())
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn verified(out: &[u8], key: &SigningKey) -> crate::audit::verify::ExportSummary {
        match verify_export(out, key.public_key()).unwrap() {
            Report::Verified(s) => s,
            Report::Failed(f) => panic!("{f}\n{}", String::from_utf8_lossy(out)),
        }
    }

    fn failed(out: &[u8], key: &SigningKey) -> String {
        match verify_export(out, key.public_key()).unwrap() {
            Report::Failed(f) => f.message,
            Report::Verified(s) => panic!("verified a tampered export: {s}"),
        }
    }

    #[test]
    fn a_filtered_jsonl_export_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let (store, key) = fifty(dir.path());
        // Events 12.. are after the checkpoint at 10; bob is every third.
        let filter = Filter {
            user: Some("bob".into()),
            since_us: Some(1_700_000_000_000_000 + 12 * 1_000_000),
            ..Filter::default()
        };
        let (out, stats) = run(&store, &filter, Format::Jsonl);
        let lines = lines(&out);
        assert!(
            lines[0].starts_with(r#"{"pgward_export":1,"first_id":11,"prev":""#),
            "{}",
            lines[0]
        );
        assert!(
            lines[0].contains(r#""filters":{"since":"2023-11-14T22:13:32.000000Z","user":"bob"}"#),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].starts_with(r#"{"pgward_checkpoint":{"last_id":10,"#),
            "{}",
            lines[1]
        );
        // bob: i % 3 == 1, i = id - 1, so ids 14, 17, …, 50.
        let bobs: Vec<u64> = (13..50).filter(|i| i % 3 == 1).map(|i| i + 1).collect();
        assert_eq!(stats.events, bobs.len() as u64);
        assert_eq!((stats.first_id, stats.last_id, stats.scanned), (11, 50, 40));
        let event_lines: Vec<&String> =
            lines.iter().filter(|l| l.starts_with("{\"id\":")).collect();
        assert_eq!(event_lines.len(), bobs.len());
        let body: Vec<u8> = store
            .connection()
            .query_row("SELECT body FROM events WHERE id = 14", [], |r| r.get(0))
            .unwrap();
        assert_eq!(event_lines[0].as_bytes(), body.as_slice(), "verbatim");
        // Checkpoints right after the events they cover.
        let at = |needle: &str| lines.iter().position(|l| l.contains(needle)).unwrap();
        assert_eq!(at(r#""last_id":20,"#), at(r#"{"id":20,"#) + 1);

        let s = verified(&out, &key);
        assert_eq!((s.first_id, s.last_id), (11, 50));
        assert_eq!(
            (s.events, s.skipped),
            (bobs.len() as u64, 40 - bobs.len() as u64)
        );
        assert_eq!(s.checkpoints, 4, "10 (the anchor), 20, 30, 40");
        assert_eq!(s.signed_through.map(|c| c.0), Some(40));
        // 41..=50 are after the last checkpoint: bob's 41, 44, 47, 50.
        assert_eq!((s.unsigned_events, s.unsigned_skipped), (4, 6));
        let text = s.to_string();
        assert!(text.contains("proven through event 40"), "{text}");
        assert!(
            text.contains("4 event(s) and 6 digest(s) after event 40 are NOT covered"),
            "{text}"
        );
    }

    #[test]
    fn an_unfiltered_export_starts_at_the_base_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, key) = fifty(dir.path());
        store.checkpoint(&key).unwrap().unwrap();
        let (out, stats) = run(&store, &Filter::default(), Format::Jsonl);
        assert_eq!((stats.events, stats.first_id), (50, 1));
        let lines = lines(&out);
        assert!(lines[0].contains(&format!("\"prev\":\"{}\"", "0".repeat(64))));
        let s = verified(&out, &key);
        assert_eq!((s.events, s.skipped, s.checkpoints), (50, 0, 5));
        assert_eq!((s.unsigned_events, s.unsigned_skipped), (0, 0));

        // Nothing matches: a range of digests after the last checkpoint.
        let none = Filter {
            user: Some("nobody".into()),
            ..Filter::default()
        };
        let (out, stats) = run(&store, &none, Format::Jsonl);
        assert_eq!(stats.events, 0);
        let s = verified(&out, &key);
        assert_eq!(s.first_id, 51);
        assert_eq!(s.events + s.skipped, 0);
    }

    #[test]
    fn a_long_run_of_skips_is_split() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = AuditStore::open(&dir.path().join("audit.db")).unwrap();
        let key = SigningKey::load_or_create(&dir.path().join("k")).unwrap();
        let mut events: Vec<Event> = (0..2100).map(|_| Event::new(Kind::Login, "t")).collect();
        events[2099] = statement(1);
        store.append(&mut events).unwrap();
        store.checkpoint(&key).unwrap().unwrap();
        let filter = Filter {
            kind: Some("statement".into()),
            ..Filter::default()
        };
        let (out, _) = run(&store, &filter, Format::Jsonl);
        let lines = lines(&out);
        let skips: Vec<usize> = lines
            .iter()
            .filter(|l| l.starts_with(SKIP_PREFIX))
            .map(|l| (l.len() - SKIP_PREFIX.len() - 3) / 64)
            .collect();
        assert_eq!(skips, vec![1024, 1024, 51]);
        let s = verified(&out, &key);
        assert_eq!((s.events, s.skipped, s.unsigned_events), (1, 2099, 0));
    }

    #[test]
    fn tampered_exports_fail() {
        let dir = tempfile::tempdir().unwrap();
        let (store, key) = fifty(dir.path());
        let filter = Filter {
            user: Some("ann".into()),
            ..Filter::default()
        };
        let (out, _) = run(&store, &filter, Format::Jsonl);
        let text = String::from_utf8(out).unwrap();
        verified(text.as_bytes(), &key);

        // One byte of event 7 (ann's, covered by the checkpoint at 10).
        let at = text.find("WHERE id = 6\"").unwrap();
        let mut flipped = text.clone().into_bytes();
        flipped[at + 11] = b'7';
        let message = failed(&flipped, &key);
        assert!(
            message.contains("events 1..=10 do not match the checkpoint"),
            "{message}"
        );

        // One digest removed from a skip line.
        let skip = text.lines().find(|l| l.starts_with(SKIP_PREFIX)).unwrap();
        let shorter = format!("{SKIP_PREFIX}\"{}", &skip[SKIP_PREFIX.len() + 65..]);
        let message = failed(text.replacen(skip, &shorter, 1).as_bytes(), &key);
        assert!(
            message.contains("where the chain continues with event"),
            "{message}"
        );

        // An event line dropped: ids 5 and 6 are digests, so 7 comes early.
        let line = text.lines().find(|l| l.starts_with("{\"id\":4,")).unwrap();
        let message = failed(text.replacen(&format!("{line}\n"), "", 1).as_bytes(), &key);
        assert!(
            message.contains("event 7 where the chain continues with event 6"),
            "{message}"
        );

        // A forged checkpoint.
        let cp = text
            .lines()
            .find(|l| l.contains("\"last_id\":20,"))
            .unwrap();
        let sig = cp.find("\"signature\":\"").unwrap() + 13;
        let mut forged = cp.as_bytes().to_vec();
        forged[sig] = if forged[sig] == b'0' { b'1' } else { b'0' };
        let forged = String::from_utf8(forged).unwrap();
        let message = failed(text.replacen(cp, &forged, 1).as_bytes(), &key);
        assert!(message.contains("checkpoint at event 20"), "{message}");
        assert!(message.contains("does not verify"), "{message}");

        // Not an export at all.
        assert!(failed(b"{\"id\":1}\n", &key).contains("not a pgward export"));
        assert!(failed(b"", &key).contains("no header"));
    }

    #[test]
    fn exporting_a_tampered_store_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = fifty(dir.path());
        store
            .connection()
            .execute(
                "UPDATE events SET body = CAST('{\"id\":9}' AS BLOB) WHERE id = 9",
                [],
            )
            .unwrap();
        let mut out = Vec::new();
        let err = export(
            &store,
            &Filter::default(),
            Format::Jsonl,
            &mut out,
            &mut |_| {},
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("fails verification at event 9"),
            "{err}"
        );
    }

    #[test]
    fn csv_has_a_row_per_matching_event_and_quotes() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = fifty(dir.path());
        let mut odd = statement(60);
        odd.text = Some("SELECT 'a,b', \"x\"\nFROM t".into());
        odd.relations = vec!["public.t".into(), "public.u".into()];
        store.append(&mut [odd]).unwrap();
        let filter = Filter {
            table: Some("patients".into()),
            ..Filter::default()
        };
        let (out, stats) = run(&store, &filter, Format::Csv);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(stats.events, 50);
        assert_eq!(text.lines().count(), 51, "header and 50 rows");
        assert_eq!(text.lines().next().unwrap(), CSV_COLUMNS.join(","));
        let row = text.lines().nth(1).unwrap();
        assert!(
            row.starts_with("1,2023-11-14T22:13:20.000000Z,statement,pgward-test,1,ann,analyst,10.0.0.7:51234,psql,clinic,read,rewritten,,,1,,1500,public.patients,public.patients.ssn: redact,,,,"),
            "{row}"
        );
        assert!(
            row.contains(",\"SELECT name, \"\"ssn\"\" FROM patients WHERE id = 0\","),
            "{row}"
        );

        let (out, stats) = run(
            &store,
            &Filter {
                table: Some("public.u".into()),
                ..Filter::default()
            },
            Format::Csv,
        );
        assert_eq!(stats.events, 1);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains(",public.t public.u,")
                && text.contains(",\"SELECT 'a,b', \"\"x\"\"\nFROM t\","),
            "{text}"
        );
        assert_eq!(csv_field(" x"), "\" x\"");
        assert_eq!(csv_field("plain"), "plain");
    }

    #[test]
    fn time_filters_bound_the_export() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = fifty(dir.path());
        let filter = Filter {
            since_us: Some(1_700_000_000_000_000 + 5 * 1_000_000),
            until_us: Some(1_700_000_000_000_000 + 8 * 1_000_000),
            ..Filter::default()
        };
        let (out, stats) = run(&store, &filter, Format::Ocsf);
        assert_eq!(stats.events, 3, "ids 6, 7, 8");
        let ids: Vec<String> = lines(&out)
            .iter()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["metadata"]["uid"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(ids, ["6", "7", "8"]);
    }
}
