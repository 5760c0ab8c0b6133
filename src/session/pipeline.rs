//! Which client requests are still waiting for the database's answer.
//!
//! The relay needs to know when a session is idle (for the idle timeout) and
//! how long each round trip took (for the latency metric). Counting "one
//! ReadyForQuery per Query, Sync or FunctionCall" is not enough, because the
//! server does not always answer one-for-one:
//!
//! * during COPY FROM STDIN it ignores Sync (and Flush) until CopyDone or
//!   CopyFail — tokio-postgres and libpq in extended mode send a Sync after
//!   the Execute that starts the COPY and another after CopyDone;
//! * after an error in the extended protocol it discards every message,
//!   Query and FunctionCall included, until the next Sync;
//! * an Execute followed by Flush (libpq pipeline mode) is running work with
//!   no Sync behind it yet.
//!
//! [`Pipeline`] mirrors those rules from the message tags alone. It is pure
//! state, fed by both relay directions under one lock. Each request can
//! carry the audit [`Record`] of its statement; the pipeline hands records
//! back in [`Pipeline::done`] when their request completes.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::statements::Record;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Simple Query: always answered by exactly one ReadyForQuery.
    Query,
    /// FunctionCall: likewise.
    Call,
    /// Execute: in flight until the ReadyForQuery of the Sync after it.
    Execute,
    Sync,
    /// CopyDone or CopyFail from the client: ends the server's copy-in mode.
    CopyEnd,
}

struct Entry {
    kind: Kind,
    sent: Instant,
    record: Option<Box<Record>>,
}

#[derive(Default)]
pub struct Pipeline {
    queue: VecDeque<Entry>,
    /// Records of requests that completed, for the relay to finish.
    pub done: Vec<Box<Record>>,
    /// The server is in copy-in mode and the client has not ended it yet:
    /// Syncs sent now are ignored by the server.
    copy_in: bool,
    /// The server is discarding messages until the next Sync.
    skipping: bool,
}

impl Pipeline {
    /// A message the client sent (and pgward forwarded).
    pub fn client_sent(&mut self, tag: u8, now: Instant) {
        self.client_sent_with(tag, now, None);
    }

    /// [`Pipeline::client_sent`] with the statement's audit record.
    pub fn client_sent_with(&mut self, tag: u8, now: Instant, record: Option<Box<Record>>) {
        let kind = match tag {
            b'Q' => Kind::Query,
            b'F' => Kind::Call,
            b'E' => Kind::Execute,
            b'S' => {
                self.skipping = false;
                if self.copy_in {
                    return;
                }
                Kind::Sync
            }
            b'c' | b'f' => {
                if self.copy_in {
                    // The copy the server is in ends here; later Syncs count.
                    self.copy_in = false;
                    return;
                }
                // Sent before the server's CopyInResponse was seen: leave a
                // marker so that response knows where the copy ends.
                Kind::CopyEnd
            }
            _ => return,
        };
        if self.skipping && matches!(kind, Kind::Query | Kind::Call | Kind::Execute) {
            return;
        }
        self.queue.push_back(Entry {
            kind,
            sent: now,
            record,
        });
    }

    /// The request the database is answering now, if it has a record.
    fn current(&mut self) -> Option<&mut Entry> {
        self.queue.iter_mut().find(|e| {
            e.record.is_some() && matches!(e.kind, Kind::Query | Kind::Call | Kind::Execute)
        })
    }

    /// A DataRow (`is_row`) or CopyData of `len` bytes from the database.
    pub fn server_data(&mut self, len: usize, is_row: bool) {
        if let Some(r) = self.current().and_then(|e| e.record.as_mut()) {
            r.data(len, is_row);
        }
    }

    /// A reply that completes or annotates the current request:
    /// CommandComplete (`C`), EmptyQueryResponse (`I`), PortalSuspended
    /// (`s`) with their bodies, or an ErrorResponse's SQLSTATE (`E`).
    pub fn server_reply(&mut self, tag: u8, body: &[u8], sqlstate: Option<&str>) {
        let Some(entry) = self.current() else {
            return;
        };
        let execute = entry.kind == Kind::Execute;
        if let Some(r) = entry.record.as_mut() {
            match tag {
                b'C' => r.complete(body),
                b'E' => r.error(sqlstate.unwrap_or("XX000")),
                _ => {}
            }
        }
        if execute && matches!(tag, b'C' | b'I' | b's' | b'E') {
            if let Some(r) = entry.record.take() {
                self.done.push(r);
            }
        }
    }

    /// Records still waiting when the session ends.
    pub fn take_unfinished(&mut self) -> Vec<Box<Record>> {
        self.queue
            .iter_mut()
            .filter_map(|e| e.record.take())
            .collect()
    }

    /// A message the server sent. Returns the round-trip time when a
    /// request completes.
    pub fn server_sent(&mut self, tag: u8) -> Option<Duration> {
        match tag {
            b'Z' => {
                while let Some(entry) = self.queue.pop_front() {
                    self.done.extend(entry.record);
                    if matches!(entry.kind, Kind::Query | Kind::Call | Kind::Sync) {
                        return Some(entry.sent.elapsed());
                    }
                }
                None
            }
            // CopyInResponse: Syncs already queued ahead of the client's
            // CopyDone are ignored by the server, and so are those sent
            // before the client ends the copy.
            b'G' => {
                let end = self.queue.iter().position(|e| e.kind == Kind::CopyEnd);
                let limit = end.unwrap_or(self.queue.len());
                let mut i = 0;
                self.queue.retain(|e| {
                    let keep = i > limit || (i < limit && e.kind != Kind::Sync);
                    i += 1;
                    keep
                });
                self.copy_in = end.is_none();
                None
            }
            b'E' => {
                self.copy_in = false;
                let simple = matches!(
                    self.queue.front().map(|e| e.kind),
                    Some(Kind::Query | Kind::Call)
                );
                if !simple {
                    // Extended protocol: everything up to the next Sync is
                    // discarded without an answer.
                    // (Requests discarded this way never ran: their records
                    // are dropped, which frees their audit places.)
                    match self.queue.iter().position(|e| e.kind == Kind::Sync) {
                        Some(sync) => {
                            let mut i = 0;
                            self.queue.retain(|e| {
                                let keep = i >= sync || e.kind == Kind::CopyEnd;
                                i += 1;
                                keep
                            });
                        }
                        None => {
                            self.queue.retain(|e| e.kind == Kind::CopyEnd);
                            self.skipping = true;
                        }
                    }
                }
                None
            }
            _ => None,
        }
    }

    /// Nothing is waiting for the database, and the database is not in a
    /// state that waits for the client to finish something.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && !self.copy_in && !self.skipping
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(p: &mut Pipeline, client: &[u8]) {
        for &tag in client {
            p.client_sent(tag, Instant::now());
        }
    }

    #[test]
    fn simple_queries_and_pipelined_syncs() {
        let mut p = Pipeline::default();
        assert!(p.is_idle());
        feed(&mut p, b"QQ");
        assert!(p.server_sent(b'Z').is_some());
        assert!(!p.is_idle(), "the second query is still running");
        assert!(p.server_sent(b'Z').is_some());
        assert!(p.is_idle());
        feed(&mut p, b"PBES");
        assert!(!p.is_idle());
        assert!(p.server_sent(b'Z').is_some());
        assert!(p.is_idle());
    }

    #[test]
    fn execute_with_flush_but_no_sync_is_busy() {
        let mut p = Pipeline::default();
        feed(&mut p, b"PBEH");
        assert!(!p.is_idle());
        feed(&mut p, b"S");
        p.server_sent(b'Z');
        assert!(p.is_idle());
    }

    #[test]
    fn syncs_during_extended_copy_in_are_ignored() {
        // tokio-postgres copy_in: Bind/Execute/Sync, CopyData…, CopyDone, Sync.
        let mut p = Pipeline::default();
        feed(&mut p, b"PBES");
        p.server_sent(b'G');
        assert!(!p.is_idle(), "in copy-in mode");
        feed(&mut p, b"ddS");
        feed(&mut p, b"cS");
        assert!(p.server_sent(b'Z').is_some());
        assert!(p.is_idle(), "one ReadyForQuery ends it all");
    }

    #[test]
    fn copy_done_pipelined_before_copy_in_response() {
        let mut p = Pipeline::default();
        feed(&mut p, b"BESdcS");
        p.server_sent(b'G');
        assert!(p.server_sent(b'Z').is_some());
        assert!(p.is_idle());
    }

    #[test]
    fn simple_query_copy() {
        let mut p = Pipeline::default();
        feed(&mut p, b"Q");
        p.server_sent(b'G');
        feed(&mut p, b"ddc");
        p.server_sent(b'Z');
        assert!(p.is_idle());
    }

    #[test]
    fn extended_error_discards_until_sync() {
        let mut p = Pipeline::default();
        // An error in the first batch; a simple Query pipelined before the
        // Sync is discarded by the server.
        feed(&mut p, b"PBEQS");
        p.server_sent(b'E');
        assert!(p.server_sent(b'Z').is_some());
        assert!(p.is_idle());
        // Error before the client sent its Sync.
        feed(&mut p, b"PBEH");
        p.server_sent(b'E');
        assert!(!p.is_idle(), "server waits for Sync");
        feed(&mut p, b"QS");
        p.server_sent(b'Z');
        assert!(p.is_idle());
    }

    #[test]
    fn simple_query_errors_change_nothing() {
        let mut p = Pipeline::default();
        feed(&mut p, b"QQ");
        p.server_sent(b'E');
        p.server_sent(b'Z');
        assert!(!p.is_idle());
        p.server_sent(b'Z');
        assert!(p.is_idle());
    }

    #[test]
    fn copy_failing_mid_way_in_extended_mode() {
        let mut p = Pipeline::default();
        feed(&mut p, b"BES");
        p.server_sent(b'G');
        feed(&mut p, b"d");
        p.server_sent(b'E');
        feed(&mut p, b"dcS");
        assert!(p.server_sent(b'Z').is_some());
        assert!(p.is_idle());
    }
}
