//! The audit store: a SQLite file of its own (WAL), separate from the user
//! store so audit writes never contend with logins.
//!
//! Appends happen in `BEGIN IMMEDIATE` transactions that read the chain's
//! head inside the transaction, so the proxy's writer and a CLI command
//! (an admin event) can both extend the one chain safely. The indexed
//! columns (`time_us`, `kind`, `user`, `database`, `class`, `relations`)
//! are copies of fields of the body for filtering without decoding bodies;
//! verification checks they still agree with it.
//!
//! Events have no secondary indexes: keeping two B-trees in step cost the
//! writer about a third of its time per event, and every reader scans an
//! id range anyway (a provable export reads every event from its first
//! match to the end). What a time index gave — where `--since` starts — a
//! *time mark* per append gives instead: the last id of the append and the
//! latest event time up to it (a running maximum, so the marks rise with
//! the ids). Events up to a mark earlier than `since` are all earlier, so a
//! reader starts after it. Verification checks no mark understates.

use std::borrow::BorrowMut;
use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::chain::{link, Checkpoint, Hash, SigningKey};
use super::event::{Encoded, Event};

#[derive(Debug, thiserror::Error)]
pub enum AuditStoreError {
    #[error("audit store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The file cannot be created or made private.
    #[error("audit store: {0}")]
    File(#[from] std::io::Error),
    #[error("audit store schema version {0} is newer than this pgward understands")]
    TooNew(i64),
    #[error("audit store: {0}")]
    Corrupt(String),
}

const MIGRATIONS: &[&str] = &[
    // 1: events, checkpoints, and where the stored chain starts.
    "CREATE TABLE events (
        id        INTEGER PRIMARY KEY,
        time_us   INTEGER NOT NULL,
        kind      TEXT NOT NULL,
        user      TEXT,
        database  TEXT,
        class     TEXT,
        relations TEXT,
        body      BLOB NOT NULL,
        hash      BLOB NOT NULL
    );
    CREATE INDEX events_time ON events(time_us);
    CREATE INDEX events_user ON events(user, time_us);
    CREATE TABLE checkpoints (
        last_id   INTEGER PRIMARY KEY,
        head      BLOB NOT NULL,
        time_us   INTEGER NOT NULL,
        signature BLOB NOT NULL
    );
    CREATE TABLE chain_base (
        only      INTEGER PRIMARY KEY CHECK (only = 1),
        base_id   INTEGER NOT NULL,
        base_hash BLOB NOT NULL
    );
    INSERT INTO chain_base VALUES (1, 0, zeroblob(32));",
    // 2: the highest spool sequence number whose event is stored.
    "CREATE TABLE spool_mark (
        only INTEGER PRIMARY KEY CHECK (only = 1),
        seq  INTEGER NOT NULL
    );
    INSERT INTO spool_mark VALUES (1, 0);",
    // 3: time marks instead of per-event indexes (see the module docs),
    // one per 1024 events already stored and one at the last.
    "DROP INDEX events_time;
    DROP INDEX events_user;
    CREATE TABLE time_marks (
        last_id  INTEGER PRIMARY KEY,
        max_time INTEGER NOT NULL
    );
    INSERT INTO time_marks (last_id, max_time)
        SELECT id, latest FROM (
            SELECT id, max(time_us) OVER (ORDER BY id) AS latest FROM events
        )
        WHERE id % 1024 = 0 OR id = (SELECT max(id) FROM events);",
];

/// One stored event, as read back.
#[derive(Clone, Debug)]
pub struct Stored {
    pub id: u64,
    pub time_us: i64,
    pub kind: String,
    pub user: Option<String>,
    pub database: Option<String>,
    pub class: Option<String>,
    pub relations: Option<String>,
    pub body: Vec<u8>,
    pub hash: Vec<u8>,
}

/// Every column of an event, in the order [`Stored::from_row`] reads.
pub const SELECT_EVENTS: &str =
    "SELECT id, time_us, kind, user, database, class, relations, body, hash FROM events";

/// The indexed columns only, for finding events without reading bodies
/// ([`Stored::from_indexed_row`]).
pub const SELECT_INDEXED: &str =
    "SELECT id, time_us, kind, user, database, class, relations FROM events";

impl Stored {
    /// A row of [`SELECT_EVENTS`].
    pub fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Stored> {
        let mut s = Stored::from_indexed_row(r)?;
        s.body = bytes(r, 7)?;
        s.hash = bytes(r, 8)?;
        Ok(s)
    }

    /// A row of [`SELECT_INDEXED`]: body and hash left empty.
    ///
    /// Columns are read without trusting their types: a row damaged by
    /// hand (a body stored as text, a number for a kind) is still read, so readers
    /// that follow the store — sinks, export — pass it on for `verify` to
    /// name, rather than stopping at it.
    pub fn from_indexed_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Stored> {
        use rusqlite::types::ValueRef;
        let time_us = match r.get_ref(1)? {
            ValueRef::Integer(t) => t,
            _ => 0,
        };
        Ok(Stored {
            id: r.get::<_, i64>(0)? as u64,
            time_us,
            kind: text(r, 2)?.unwrap_or_default(),
            user: text(r, 3)?,
            database: text(r, 4)?,
            class: text(r, 5)?,
            relations: text(r, 6)?,
            body: Vec::new(),
            hash: Vec::new(),
        })
    }
}

fn bytes(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Vec<u8>> {
    use rusqlite::types::ValueRef;
    Ok(match r.get_ref(i)? {
        ValueRef::Blob(b) | ValueRef::Text(b) => b.to_vec(),
        _ => Vec::new(),
    })
}

fn text(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Option<String>> {
    use rusqlite::types::ValueRef;
    Ok(match r.get_ref(i)? {
        ValueRef::Null => None,
        ValueRef::Text(b) | ValueRef::Blob(b) => Some(String::from_utf8_lossy(b).into_owned()),
        ValueRef::Integer(n) => Some(n.to_string()),
        ValueRef::Real(x) => Some(x.to_string()),
    })
}

/// Which events to read.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub since_us: Option<i64>,
    pub until_us: Option<i64>,
    pub user: Option<String>,
    pub database: Option<String>,
    /// A relation name as stored (`public.patients`) or its last part.
    pub table: Option<String>,
    pub class: Option<String>,
    pub kind: Option<String>,
    /// Only events with an id above this.
    pub after_id: Option<u64>,
}

impl Filter {
    /// Whether a stored event passes (the same test the SQL applies).
    pub fn matches(&self, e: &Stored) -> bool {
        self.since_us.map_or(true, |t| e.time_us >= t)
            && self.until_us.map_or(true, |t| e.time_us < t)
            && self.after_id.map_or(true, |id| e.id > id)
            && opt_eq(&self.user, &e.user)
            && opt_eq(&self.database, &e.database)
            && opt_eq(&self.class, &e.class)
            && self.kind.as_ref().map_or(true, |k| *k == e.kind)
            && self.table.as_ref().map_or(true, |t| {
                e.relations.as_deref().is_some_and(|r| {
                    r.split(' ')
                        .any(|rel| rel == t || rel.rsplit('.').next() == Some(t.as_str()))
                })
            })
    }
}

fn opt_eq(want: &Option<String>, have: &Option<String>) -> bool {
    want.as_ref()
        .map_or(true, |w| have.as_deref() == Some(w.as_str()))
}

pub struct AuditStore {
    conn: Connection,
}

impl AuditStore {
    /// Opens (creating if needed) the store at `path` for appending.
    pub fn open(path: &Path) -> Result<AuditStore, AuditStoreError> {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        crate::private_file::prepare(path)?;
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // Commits reach the operating system at once (a killed pgward loses
        // nothing it acknowledged); fsync happens at WAL checkpoints.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > MIGRATIONS.len() as i64 {
            return Err(AuditStoreError::TooNew(version));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(AuditStore { conn })
    }

    /// Opens an existing store without changing it.
    pub fn open_read_only(path: &Path) -> Result<AuditStore, AuditStoreError> {
        if !path.exists() {
            return Err(AuditStoreError::Corrupt(format!(
                "{} does not exist",
                path.display()
            )));
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(10))?;
        Ok(AuditStore { conn })
    }

    /// Leaves WAL checkpoints — which fsync, and would otherwise stall
    /// every few hundredth commit by milliseconds — to
    /// [`AuditStore::merge_wal`] on another connection, off the commit path.
    pub fn defer_wal_merges(&self) -> Result<(), AuditStoreError> {
        self.conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        Ok(())
    }

    /// Copies committed WAL content into the database file (PASSIVE: never
    /// waits for, nor blocks, the writer).
    pub fn merge_wal(&self) -> Result<(), AuditStoreError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// The raw connection, for tests that tamper with the store.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    fn head_in(conn: &Connection) -> Result<(u64, Hash), AuditStoreError> {
        let last: Option<(i64, Vec<u8>)> = conn
            .prepare_cached("SELECT id, hash FROM events ORDER BY id DESC LIMIT 1")?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let (id, hash) = match last {
            Some(row) => row,
            None => conn.query_row("SELECT base_id, base_hash FROM chain_base", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?,
        };
        let hash: Hash = hash
            .try_into()
            .map_err(|_| AuditStoreError::Corrupt(format!("event {id} has a malformed hash")))?;
        Ok((id as u64, hash))
    }

    /// The last stored id and hash.
    pub fn head(&self) -> Result<(u64, Hash), AuditStoreError> {
        Self::head_in(&self.conn)
    }

    /// Where the stored chain starts: the id before the first event and
    /// the hash it chains from.
    pub fn base(&self) -> Result<(u64, Hash), AuditStoreError> {
        let (id, hash): (i64, Vec<u8>) =
            self.conn
                .query_row("SELECT base_id, base_hash FROM chain_base", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
        let hash: Hash = hash
            .try_into()
            .map_err(|_| AuditStoreError::Corrupt("malformed chain base".into()))?;
        Ok((id as u64, hash))
    }

    /// Appends `events` in one transaction, assigning ids and extending the
    /// chain. Returns the new head.
    pub fn append(&mut self, events: &mut [Event]) -> Result<(u64, Hash), AuditStoreError> {
        let mut encoded: Vec<Encoded> = events.iter().cloned().map(Encoded::new).collect();
        let head = self.append_encoded(&mut encoded, None)?;
        for (e, stored) in events.iter_mut().zip(&encoded) {
            e.id = stored.event.id;
        }
        Ok(head)
    }

    /// [`AuditStore::append`] for events encoded already, also recording
    /// in the same transaction that every spooled event through
    /// `spool_mark` is now stored.
    pub fn append_encoded<E: BorrowMut<Encoded>>(
        &mut self,
        events: &mut [E],
        spool_mark: Option<u64>,
    ) -> Result<(u64, Hash), AuditStoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let head = Self::append_in(&tx, events)?;
        if let Some(seq) = spool_mark {
            tx.prepare_cached("UPDATE spool_mark SET seq = max(seq, ?1)")?
                .execute([seq as i64])?;
        }
        tx.commit()?;
        Ok(head)
    }

    /// The highest spool sequence number whose event is stored.
    pub fn spool_mark(&self) -> Result<u64, AuditStoreError> {
        let seq: i64 = self
            .conn
            .query_row("SELECT seq FROM spool_mark", [], |r| r.get(0))?;
        Ok(seq.max(0) as u64)
    }

    /// [`AuditStore::append_encoded`] inside a write transaction the caller
    /// holds.
    fn append_in<E: BorrowMut<Encoded>>(
        tx: &Connection,
        events: &mut [E],
    ) -> Result<(u64, Hash), AuditStoreError> {
        let (mut id, mut hash) = Self::head_in(tx)?;
        // A mark damaged by hand (not a number) must not stop recording:
        // it is read as absent here, and `verify` names it.
        let mut latest: Option<i64> = tx
            .prepare_cached("SELECT max_time FROM time_marks ORDER BY last_id DESC LIMIT 1")?
            .query_row([], |r| match r.get_ref(0)? {
                rusqlite::types::ValueRef::Integer(t) => Ok(Some(t)),
                _ => Ok(None),
            })
            .optional()?
            .flatten();
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO events (id, time_us, kind, user, database, class, relations, body, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            let mut body = Vec::new();
            for stored in events.iter_mut() {
                let stored = stored.borrow_mut();
                id += 1;
                stored.number_into(&mut body, id);
                let event = &mut stored.event;
                event.id = id;
                hash = next_hash(&hash, &body);
                latest = Some(latest.map_or(event.time_us, |t| t.max(event.time_us)));
                let relations = (!event.relations.is_empty()).then(|| event.relations.join(" "));
                insert.execute(params![
                    id as i64,
                    event.time_us,
                    event.kind.as_str(),
                    event.user(),
                    event.database(),
                    event.class.as_deref(),
                    relations,
                    &body,
                    &hash[..],
                ])?;
            }
        }
        if let (false, Some(latest)) = (events.is_empty(), latest) {
            tx.prepare_cached("INSERT INTO time_marks (last_id, max_time) VALUES (?1, ?2)")?
                .execute(params![id as i64, latest])?;
        }
        Ok((id, hash))
    }

    /// Moves the start of the stored chain from `from` (the current base)
    /// to `to`, an event with a signed checkpoint, in one transaction:
    /// appends `record` (when given) first, deletes the events through
    /// `to.0` and the checkpoints before it, and makes `to` the base. The
    /// caller must have verified the events in between
    /// ([`retention`](super::retention) does). `Ok(false)`, with nothing
    /// changed, when the base is no longer `from` (another prune ran).
    pub fn advance_base(
        &mut self,
        from: (u64, &Hash),
        to: (u64, &Hash),
        record: Option<&mut Event>,
    ) -> Result<bool, AuditStoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let (base_id, base_hash): (i64, Vec<u8>) =
            tx.query_row("SELECT base_id, base_hash FROM chain_base", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        if base_id as u64 != from.0 || base_hash.as_slice() != from.1.as_slice() {
            return Ok(false);
        }
        let to_id = to.0 as i64;
        let signed: Option<Vec<u8>> = tx
            .query_row(
                "SELECT head FROM checkpoints WHERE last_id = ?1",
                [to_id],
                |r| r.get(0),
            )
            .optional()?;
        let stored: Option<Vec<u8>> = tx
            .query_row("SELECT hash FROM events WHERE id = ?1", [to_id], |r| {
                r.get(0)
            })
            .optional()?;
        if signed.as_deref() != Some(&to.1[..]) || stored.as_deref() != Some(&to.1[..]) {
            return Err(AuditStoreError::Corrupt(format!(
                "event {} or its checkpoint changed while the prune ran; nothing was pruned",
                to.0
            )));
        }
        // The events to delete are the ones the caller verified: their chain
        // is computed again under the write lock, so none changed since.
        {
            let mut rows = tx.prepare(
                "SELECT id, body, hash FROM events WHERE id > ?1 AND id <= ?2 ORDER BY id",
            )?;
            let mut rows = rows.query(params![from.0 as i64, to_id])?;
            let (mut expect, mut hash) = (from.0, *from.1);
            while let Some(r) = rows.next()? {
                expect += 1;
                let id = r.get::<_, i64>(0)? as u64;
                hash = next_hash(&hash, &bytes(r, 1)?);
                if id != expect || bytes(r, 2)?.as_slice() != &hash[..] {
                    return Err(AuditStoreError::Corrupt(format!(
                        "event {expect} changed while the prune ran; nothing was pruned"
                    )));
                }
            }
            if expect != to.0 || hash != *to.1 {
                return Err(AuditStoreError::Corrupt(format!(
                    "events {}..={} changed while the prune ran; nothing was pruned",
                    from.0 + 1,
                    to.0
                )));
            }
        }
        if let Some(record) = record {
            let mut encoded = [Encoded::new(record.clone())];
            Self::append_in(&tx, &mut encoded)?;
            record.id = encoded[0].event.id;
        }
        let deleted = tx.execute("DELETE FROM events WHERE id <= ?1", [to_id])?;
        if deleted as u64 != to.0 - from.0 {
            // Rolled back: the ids in between were not all there.
            return Err(AuditStoreError::Corrupt(format!(
                "events {}..={} are not all stored; nothing was pruned",
                from.0 + 1,
                to.0
            )));
        }
        tx.execute("DELETE FROM checkpoints WHERE last_id < ?1", [to_id])?;
        tx.execute("DELETE FROM time_marks WHERE last_id < ?1", [to_id])?;
        tx.execute(
            "UPDATE chain_base SET base_id = ?1, base_hash = ?2",
            params![to_id, &to.1[..]],
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// Signs the current head unless a checkpoint already covers it.
    pub fn checkpoint(&mut self, key: &SigningKey) -> Result<Option<Checkpoint>, AuditStoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let (id, hash) = Self::head_in(&tx)?;
        let covered: Option<i64> =
            tx.query_row("SELECT max(last_id) FROM checkpoints", [], |r| r.get(0))?;
        if id == 0 || covered.is_some_and(|c| c as u64 >= id) {
            return Ok(None);
        }
        let cp = Checkpoint::sign(key, id, &hash, super::event::now_us());
        tx.execute(
            "INSERT INTO checkpoints (last_id, head, time_us, signature) VALUES (?1, ?2, ?3, ?4)",
            params![cp.last_id as i64, cp.head, cp.time_us, cp.signature],
        )?;
        tx.commit()?;
        Ok(Some(cp))
    }

    /// Every checkpoint, oldest first.
    pub fn checkpoints(&self) -> Result<Vec<Checkpoint>, AuditStoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT last_id, head, time_us, signature FROM checkpoints ORDER BY last_id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(Checkpoint {
                last_id: r.get::<_, i64>(0)? as u64,
                head: r.get(1)?,
                time_us: r.get(2)?,
                signature: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Calls `f` for each event with an id in `from..=to` (all when `None`),
    /// in id order, without holding more than one in memory.
    pub fn scan<E: From<AuditStoreError>>(
        &self,
        from: u64,
        to: Option<u64>,
        mut f: impl FnMut(Stored) -> Result<(), E>,
    ) -> Result<(), E> {
        let clamp = |id: u64| id.min(i64::MAX as u64) as i64;
        let to = to.map_or(i64::MAX, clamp);
        let mut stmt = self
            .conn
            .prepare(&format!(
                "{SELECT_EVENTS} WHERE id >= ?1 AND id <= ?2 ORDER BY id"
            ))
            .map_err(AuditStoreError::from)?;
        let mut rows = stmt
            .query(params![clamp(from), to])
            .map_err(AuditStoreError::from)?;
        while let Some(r) = rows.next().map_err(AuditStoreError::from)? {
            f(Stored::from_row(r).map_err(AuditStoreError::from)?)?;
        }
        Ok(())
    }

    /// Where a reader of events at or after `since_us` starts: an id no
    /// later than the first such event, from the time marks. `None` when
    /// no stored event is that late.
    pub fn first_id_since(&self, since_us: i64) -> Result<Option<u64>, AuditStoreError> {
        let (last_id, _) = self.head()?;
        let before: Option<i64> = self.conn.query_row(
            "SELECT max(last_id) FROM time_marks WHERE max_time < ?1",
            [since_us],
            |r| r.get(0),
        )?;
        let start = before.map_or(0, |id| id.max(0) as u64) + 1;
        Ok((start <= last_id).then_some(start))
    }

    pub fn count(&self) -> Result<u64, AuditStoreError> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))?;
        Ok(n as u64)
    }
}

/// `SHA-256(body)`: what the chain links. Hashing the body first lets an
/// export prove a subset of events with only the digests of the rest.
pub fn digest(body: &[u8]) -> Hash {
    let d = ring::digest::digest(&ring::digest::SHA256, body);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The hash an event with `body` gets after `prev`.
pub fn next_hash(prev: &Hash, body: &[u8]) -> Hash {
    link(prev, &digest(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::GENESIS;
    use crate::audit::event::Kind;

    #[test]
    fn appends_chain_and_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = AuditStore::open(&dir.path().join("audit.db")).unwrap();
        let key = SigningKey::load_or_create(&dir.path().join("k")).unwrap();
        assert!(store.checkpoint(&key).unwrap().is_none(), "nothing to sign");
        let mut events: Vec<Event> = (0..3).map(|_| Event::new(Kind::Login, "t")).collect();
        let (last, head) = store.append(&mut events).unwrap();
        assert_eq!(last, 3);
        assert_eq!(events[2].id, 3);
        let mut hash = GENESIS;
        store
            .scan(1, None, |e| -> Result<(), AuditStoreError> {
                hash = next_hash(&hash, &e.body);
                assert_eq!(e.hash, hash.to_vec());
                Ok(())
            })
            .unwrap();
        assert_eq!(hash, head);
        let cp = store.checkpoint(&key).unwrap().unwrap();
        assert_eq!(cp.last_id, 3);
        assert!(cp.verify(key.public_key()));
        assert!(store.checkpoint(&key).unwrap().is_none(), "already covered");
    }

    /// (last id, latest time) of every time mark, in order.
    fn time_marks(store: &AuditStore) -> Vec<(i64, i64)> {
        store
            .connection()
            .prepare("SELECT last_id, max_time FROM time_marks ORDER BY last_id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn readers_from_a_time_start_no_later_than_its_first_event() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = AuditStore::open(&dir.path().join("audit.db")).unwrap();
        // Appends of (times): ids 1-2, 3-4, 5-6. Event 4 is late (a long
        // statement), event 5 earlier than it.
        for times in [[10, 20], [30, 90], [40, 100]] {
            let mut events: Vec<Event> = times
                .iter()
                .map(|&t| {
                    let mut e = Event::new(Kind::Login, "t");
                    e.time_us = t;
                    e
                })
                .collect();
            store.append(&mut events).unwrap();
        }
        let marks = time_marks(&store);
        assert_eq!(marks, [(2, 20), (4, 90), (6, 100)], "a running maximum");
        for (since, start) in [(0, Some(1)), (20, Some(1)), (21, Some(3)), (40, Some(3))] {
            assert_eq!(store.first_id_since(since).unwrap(), start, "since {since}");
        }
        // Only event 6 (at 100) is that late; the start, 5, is before it.
        assert_eq!(store.first_id_since(91).unwrap(), Some(5));
        assert_eq!(
            store.first_id_since(101).unwrap(),
            None,
            "nothing that late"
        );
    }

    #[test]
    fn a_store_from_before_time_marks_gets_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        let mut store = AuditStore::open(&path).unwrap();
        let mut events: Vec<Event> = (0..1030)
            .map(|i| {
                let mut e = Event::new(Kind::Login, "t");
                e.time_us = i;
                e
            })
            .collect();
        store.append(&mut events).unwrap();
        // Back to schema 2: per-event indexes, no marks.
        store
            .connection()
            .execute_batch(
                "DROP TABLE time_marks;
                 CREATE INDEX events_time ON events(time_us);
                 CREATE INDEX events_user ON events(user, time_us);
                 PRAGMA user_version = 2;",
            )
            .unwrap();
        drop(store);
        let store = AuditStore::open(&path).unwrap();
        let marks = time_marks(&store);
        assert_eq!(marks, [(1024, 1023), (1030, 1029)]);
        let indexes: i64 = store
            .connection()
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(indexes, 0);
        assert_eq!(store.first_id_since(1024).unwrap(), Some(1025));
    }

    #[test]
    fn rows_damaged_by_hand_are_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = AuditStore::open(&dir.path().join("audit.db")).unwrap();
        let mut events: Vec<Event> = (0..3).map(|_| Event::new(Kind::Login, "t")).collect();
        store.append(&mut events).unwrap();
        store
            .connection()
            .execute(
                "UPDATE events SET body = CAST(body AS TEXT), kind = 42, time_us = 'x' WHERE id = 2",
                [],
            )
            .unwrap();
        let mut read = Vec::new();
        store
            .scan(1, None, |e| -> Result<(), AuditStoreError> {
                read.push((e.id, e.kind, e.time_us, e.body.is_empty()));
                Ok(())
            })
            .unwrap();
        assert_eq!(read.len(), 3, "the scan goes past the damaged row");
        assert_eq!(read[1], (2, "42".to_string(), 0, false));
        assert_eq!(read[2].1, "login");
    }
}
