//! psql through pgward over TLS: the meta-commands people type every day
//! (`\l`, `\dn`, `\dt`, `\d`, `\d+`, `\df`, `\du`, `\dx`, `\x`) print
//! exactly what they print on a direct connection; `\copy` works both
//! ways; `\watch` repeats until interrupted; Ctrl+C cancels a running
//! query through pgward's cancel relay and psql carries on; a client in
//! LATIN1 gets and sends the same bytes as on a direct connection.
//!
//! As the masked analyst, the same meta-commands work, `\copy … to` yields
//! masked, row-filtered data only, and writes (`\copy … from`, DELETE)
//! are ordinary 42501 errors after which the session goes on.
//!
//! psql is the reference client for PostgreSQL's wire protocol and its
//! catalog queries are what most GUI tools copy, so any difference here
//! is something people notice at once.

use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::fixture::{direct, run, Compat, Endpoint};
use crate::harness::db;

/// How long one psql invocation may take.
const LIMIT: Duration = Duration::from_secs(60);

/// psql without a psqlrc, with SQLSTATEs in error messages.
pub fn psql(ep: &Endpoint, args: &[&str]) -> Output {
    psql_env(ep, &[], args)
}

/// [`psql`] with extra environment variables.
pub fn psql_env(ep: &Endpoint, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new("psql");
    cmd.args(["-X", "-v", "VERBOSITY=verbose"]).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(&mut cmd, ep, LIMIT)
}

/// [`psql`] that must succeed (stopping at the first error); its stdout.
pub fn psql_out(ep: &Endpoint, args: &[&str]) -> String {
    let mut all = vec!["-v", "ON_ERROR_STOP=1"];
    all.extend_from_slice(args);
    let out = psql(ep, &all);
    assert!(
        out.status.success(),
        "psql {args:?} as {}@{} failed ({}):\n{}",
        ep.user,
        ep.port,
        out.status,
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// stdout and stderr of a finished program, for messages.
pub fn text(out: &Output) -> String {
    format!(
        "--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `args` through pgward as alice and directly; the outputs must be
/// equal. Other tests create objects in `compat` meanwhile, so the direct
/// run is repeated around the proxied one and a comparison only counts
/// when the database did not change in between.
fn same_as_direct(c: &Compat, args: &[&str]) -> String {
    for _ in 0..6 {
        let before = psql_out(&direct(), args);
        let via = psql_out(&c.unrestricted(), args);
        let after = psql_out(&direct(), args);
        if before == after {
            assert_eq!(via, before, "psql {args:?}: pgward differs from direct");
            return via;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("psql {args:?}: the database kept changing; no stable comparison");
}

#[test]
fn meta_commands_as_alice_equal_a_direct_connection() {
    let c = Compat::start();
    let cases: &[(&[&str], &str)] = &[
        (&["-c", "\\l"], "compat"),
        (&["-c", "\\dn"], "public"),
        (&["-c", "\\dt"], "patients"),
        (&["-c", "\\d patients"], "Indexes:"),
        (&["-c", "\\d+ patients"], "Access method: heap"),
        (&["-c", "\\d+ clinic_counts"], "View definition:"),
        (&["-c", "\\dT+ mood"], "elated"),
        (&["-c", "\\df"], "List of functions"),
        (&["-c", "\\df int4pl"], "int4pl"),
        (&["-c", "\\du"], "trust_user"),
        (&["-c", "\\dx"], "plpgsql"),
        (
            &[
                "-c",
                "\\x",
                "-c",
                "SELECT * FROM kinds WHERE id <= 3 ORDER BY id",
            ],
            "-[ RECORD 3 ]",
        ),
    ];
    for (args, expect) in cases {
        let out = same_as_direct(&c, args);
        assert!(
            out.contains(expect),
            "psql {args:?}: no {expect:?} in\n{out}"
        );
    }
    // And it really went through pgward, over TLS.
    let info = psql_out(&c.unrestricted(), &["-c", "\\conninfo"]);
    assert!(info.contains("SSL connection"), "{info}");
}

#[test]
fn meta_commands_work_for_the_masked_role() {
    let c = Compat::start();
    let ann = c.masked();
    for (cmd, expect) in [
        ("\\dt", "patients"),
        ("\\d patients", "ssn"),
        ("\\d+ visits", "notes"),
        ("\\dn", "public"),
        ("\\df", "List of functions"),
        ("\\du", "Role name"),
        ("\\dx", "plpgsql"),
        ("\\l", "compat"),
    ] {
        let out = psql(&ann, &["-c", cmd]);
        let all = text(&out);
        assert!(out.status.success(), "{cmd} as ann: {all}");
        assert!(all.contains(expect), "{cmd} as ann: no {expect:?} in {all}");
    }
    // Expanded output of masked data.
    let out = psql_out(
        &ann,
        &[
            "-c",
            "\\x",
            "-c",
            "SELECT ssn, email FROM patients ORDER BY id LIMIT 2",
        ],
    );
    assert!(out.contains("-[ RECORD 2 ]"), "{out}");
    assert!(out.contains("ssn   | *******"), "{out}");
    assert!(out.contains("email | ***@example.org"), "{out}");
}

/// The patients as the analyst may see them, computed directly.
fn masked_clinic_1() -> Vec<(String, String)> {
    let rows = db().sql(
        "compat",
        "SELECT id, ssn, email, extract(year FROM dob) FROM patients WHERE clinic_id = 1 ORDER BY id",
    );
    rows.lines()
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            let last4 = &f[1][f[1].len() - 4..];
            let masked = format!("{},1,*******{last4},{}-01-01,***@example.org", f[0], f[3]);
            (masked, format!("{}|{}", f[1], f[2]))
        })
        .collect()
}

#[test]
fn copy_out_as_the_masked_role_is_masked_and_row_filtered() {
    let c = Compat::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("patients.csv");
    psql_out(
        &c.masked(),
        &[
            "-c",
            &format!(
                "\\copy (SELECT id, clinic_id, ssn, dob, email, name FROM patients ORDER BY id) TO '{}' CSV",
                file.display()
            ),
        ],
    );
    let got = std::fs::read_to_string(&file).expect("copy file");
    let expected = masked_clinic_1();
    assert_eq!(got.lines().count(), expected.len(), "clinic 1's rows only");
    for (line, (want, raw)) in got.lines().zip(&expected) {
        // id, clinic, ssn, dob, email as masked; then the hashed name.
        let (head, name) = line.rsplit_once(',').expect("name column");
        let f: Vec<&str> = head.split(',').collect();
        let rebuilt = format!("{},{},{},{},{}", f[0], f[1], f[2], f[3], f[4]);
        assert_eq!(&rebuilt, want);
        assert_eq!(name.len(), 64, "hashed name: {line}");
        let (ssn, email) = raw.split_once('|').expect("raw");
        assert!(!line.contains(ssn) && !line.contains(email), "{line}");
    }

    // A whole table too (psql sends COPY patients TO STDOUT).
    let file2 = dir.path().join("all.csv");
    psql_out(
        &c.masked(),
        &[
            "-c",
            &format!("\\copy patients TO '{}' CSV", file2.display()),
        ],
    );
    let all = std::fs::read_to_string(&file2).expect("copy file");
    assert_eq!(all.lines().count(), expected.len());
    assert!(
        all.lines().all(|l| l.split(',').nth(1) == Some("1")),
        "{all}"
    );
    assert!(!all.contains("patient1@example.org"), "{all}");

    // The denied column cannot be copied out.
    let out = psql(
        &c.masked(),
        &["-c", &format!("\\copy visits TO '{}'", file2.display())],
    );
    let msg = text(&out);
    assert!(!msg.contains("clinical note"), "{msg}");
}

#[test]
fn copy_both_ways_as_alice_and_copy_in_refused_for_the_masked_role() {
    let c = Compat::start();
    let alice = c.unrestricted();
    let dir = tempfile::tempdir().expect("tempdir");
    let via = dir.path().join("via.csv");
    let straight = dir.path().join("direct.csv");
    let copy_out = |ep: &Endpoint, file: &Path| {
        psql_out(
            ep,
            &[
                "-c",
                &format!(
                    "\\copy (SELECT * FROM kinds ORDER BY id) TO '{}' CSV HEADER",
                    file.display()
                ),
            ],
        )
    };
    assert_eq!(copy_out(&alice, &via).trim(), "COPY 200");
    copy_out(&direct(), &straight);
    let bytes = std::fs::read(&via).expect("via");
    assert_eq!(bytes, std::fs::read(&straight).expect("direct"));

    // In: into a table of this test's own, then compare with the source.
    db().sql("compat", "CREATE TABLE psql_copy_in (LIKE kinds)");
    let out = psql_out(
        &alice,
        &[
            "-c",
            &format!("\\copy psql_copy_in FROM '{}' CSV HEADER", via.display()),
        ],
    );
    assert_eq!(out.trim(), "COPY 200");
    let diff = db().sql(
        "compat",
        "SELECT count(*) FROM (SELECT * FROM kinds EXCEPT SELECT * FROM psql_copy_in) d",
    );
    assert_eq!(diff, "0");

    // The analyst may not load anything; the session goes on.
    let rows = dir.path().join("new.csv");
    std::fs::write(
        &rows,
        "900001,1,Eve Mallory,000-00-0000,eve@evil.example,1990-01-01,555-0000\n",
    )
    .expect("write");
    let out = psql(
        &c.masked(),
        &[
            "-c",
            &format!("\\copy patients FROM '{}' CSV", rows.display()),
            "-c",
            "SELECT 'still here' AS after",
        ],
    );
    let msg = text(&out);
    assert!(msg.contains("ERROR:  42501:"), "{msg}");
    assert!(msg.contains("COPY"), "a readable reason: {msg}");
    assert!(msg.contains("still here"), "{msg}");
    assert_eq!(
        db().sql("compat", "SELECT count(*) FROM patients WHERE id = 900001"),
        "0"
    );
}

#[test]
fn refused_statement_is_an_ordinary_error_and_the_session_goes_on() {
    let c = Compat::start();
    let out = psql(
        &c.masked(),
        &[
            "-c",
            "DELETE FROM visits",
            "-c",
            "UPDATE patients SET ssn = 'x'",
            "-c",
            "SELECT notes FROM visits LIMIT 1",
            "-c",
            "SELECT count(*) AS mine FROM visits",
        ],
    );
    let msg = text(&out);
    assert_eq!(
        msg.matches("ERROR:  42501: pgward: writing").count(),
        2,
        "{msg}"
    );
    // A denied column is, for the analyst, a column that does not exist.
    assert!(
        msg.contains("ERROR:  42703: column \"notes\" does not exist"),
        "{msg}"
    );
    assert!(!msg.contains("clinical note"), "{msg}");
    let mine = db().sql("compat", "SELECT count(*) FROM visits WHERE clinic_id = 1");
    assert!(msg.lines().any(|l| l.trim() == mine), "{msg}");
    assert_eq!(db().sql("compat", "SELECT count(*) FROM visits"), "3000");
}

/// A running psql whose output is collected as it comes.
struct Running {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
    /// The terminal's input side, when psql runs on a pseudo-terminal.
    terminal: Option<std::fs::File>,
}

impl Running {
    /// psql reading a script: stdout and stderr are pipes.
    fn psql(ep: &Endpoint, args: &[&str]) -> Running {
        let mut cmd = Command::new("psql");
        cmd.args(["-X", "-v", "VERBOSITY=verbose"]).args(args);
        ep.apply(&mut cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("psql");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().expect("stdout"), stdout.clone()),
            collect(child.stderr.take().expect("stderr"), stderr.clone()),
        ];
        Running {
            child,
            stdout,
            stderr,
            readers,
            terminal: None,
        }
    }

    /// Interactive psql, as a person runs it: stdin and stdout are a
    /// pseudo-terminal (so psql survives Ctrl+C), stderr is a pipe.
    fn interactive(ep: &Endpoint) -> Running {
        let (mut master, mut slave) = (0, 0);
        // SAFETY: openpty writes two descriptors into the given integers;
        // the name, termios and winsize pointers may be null.
        let rc = unsafe {
            nix::libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both descriptors were just opened and are owned here only.
        let (master, slave) = unsafe {
            (
                std::fs::File::from_raw_fd(master),
                std::fs::File::from_raw_fd(slave),
            )
        };
        let mut cmd = Command::new("psql");
        cmd.args(["-X", "-n", "-P", "pager=off", "-v", "VERBOSITY=verbose"]);
        ep.apply(&mut cmd);
        let mut child = cmd
            .stdin(slave.try_clone().expect("pty"))
            .stdout(slave)
            .stderr(Stdio::piped())
            .spawn()
            .expect("psql");
        // `cmd` holds the parent's copies of the terminal side; closing
        // them lets reads of the master end when psql exits.
        drop(cmd);
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(master.try_clone().expect("pty"), stdout.clone()),
            collect(child.stderr.take().expect("stderr"), stderr.clone()),
        ];
        Running {
            child,
            stdout,
            stderr,
            readers,
            terminal: Some(master),
        }
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().expect("lock")).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().expect("lock")).into_owned()
    }

    /// Types a line on the terminal.
    fn type_line(&mut self, line: &str) {
        let term = self.terminal.as_mut().expect("interactive psql");
        term.write_all(format!("{line}\n").as_bytes())
            .expect("write to psql");
    }

    fn interrupt(&self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .expect("SIGINT");
    }

    /// Waits until `f(stdout, stderr)` holds, or panics after `limit`.
    fn until(&mut self, limit: Duration, what: &str, f: impl Fn(&str, &str) -> bool) {
        let started = Instant::now();
        while !f(&self.stdout(), &self.stderr()) {
            if started.elapsed() > limit || self.child.try_wait().ok().flatten().is_some() {
                let _ = self.child.kill();
                panic!(
                    "psql: no {what}:\n--- stdout\n{}\n--- stderr\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for exit; (success, stdout, stderr).
    fn finish(mut self, limit: Duration) -> (bool, String, String) {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            if started.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("psql did not finish within {limit:?}:\n{}", self.stdout());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        self.terminal.take();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        (status.success(), self.stdout(), self.stderr())
    }
}

fn collect(mut from: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => into.lock().expect("lock").extend_from_slice(&buf[..n]),
            }
        }
    })
}

#[test]
fn watch_repeats_until_interrupted() {
    // psql 15's \watch has no count: it runs until SIGINT, after which a
    // script goes on with its next line.
    let c = Compat::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("watch.sql");
    std::fs::write(
        &script,
        "SELECT count(*) AS watched FROM patients \\watch 0.2\nSELECT 'after watch' AS done;\n",
    )
    .expect("script");
    let expected = db().sql(
        "compat",
        "SELECT count(*) FROM patients WHERE clinic_id = 1",
    );
    for (ep, count) in [
        (c.unrestricted(), "1000".to_string()),
        (c.masked(), expected),
    ] {
        let mut psql = Running::psql(&ep, &["-f", script.to_str().expect("utf8")]);
        psql.until(Duration::from_secs(20), "second \\watch round", |out, _| {
            out.matches("(every 0.2s)").count() >= 2
        });
        psql.interrupt();
        let (_, out, err) = psql.finish(Duration::from_secs(10));
        let rounds: Vec<&str> = out.split("(every 0.2s)").skip(1).collect();
        assert!(rounds.len() >= 2, "{out}\n{err}");
        for round in &rounds {
            assert!(
                round.contains(&format!(" watched \n---------\n {count:>7}\n(1 row)")),
                "{}: {round:?}",
                ep.user
            );
        }
        assert!(out.contains("after watch"), "{}: {out}\n{err}", ep.user);
    }
}

#[test]
fn ctrl_c_cancels_pg_sleep_and_psql_goes_on() {
    // Interactive psql answers SIGINT during a query with a CancelRequest
    // on a new connection; pgward must pass it to the right backend. A
    // script would exit after the cancel, so this runs on a terminal.
    // The analyst may not call pg_sleep, so it cancels a long join.
    let c = Compat::start();
    let long = [
        (
            c.unrestricted(),
            "SELECT pg_sleep(60) AS psql_cancel_alice;",
        ),
        (
            c.masked(),
            "SELECT count(*) AS psql_cancel_ann FROM visits a, visits b, visits c;",
        ),
    ];
    for (ep, query) in long {
        let marker = format!("psql_cancel_{}", ep.user);
        let mut psql = Running::interactive(&ep);
        psql.until(Duration::from_secs(20), "prompt", |out, _| {
            out.contains("compat=")
        });
        psql.type_line(query);
        let running = format!(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' \
             AND query LIKE '%{marker}%' AND pid <> pg_backend_pid()"
        );
        psql.until(Duration::from_secs(20), "pg_sleep running", |_, _| {
            db().sql("postgres", &running) == "1"
        });
        let started = Instant::now();
        psql.interrupt();
        psql.until(Duration::from_secs(10), "cancel", |_, err| {
            err.contains("ERROR:  57014: canceling statement due to user request")
        });
        let took = started.elapsed();
        assert!(took < Duration::from_secs(3), "{}: took {took:?}", ep.user);
        crate::harness::eventually(Duration::from_secs(2), "backend idle", || {
            db().sql("postgres", &running) == "0"
        });
        // The same session goes on.
        psql.type_line("SELECT 'still' || ' usable' AS after, current_user;");
        psql.until(Duration::from_secs(10), "answer after cancel", |out, _| {
            out.contains("still usable")
        });
        psql.type_line("\\q");
        let (ok, out, err) = psql.finish(Duration::from_secs(10));
        assert!(ok, "{}: psql exited badly:\n{out}\n{err}", ep.user);
    }
    assert!(c.proxy.metric("pgward_cancel_requests_total") >= 2.0);
}

/// A LATIN1 database with characters outside ASCII, created directly.
fn latin1_db() -> &'static str {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        db().sql(
            "postgres",
            "CREATE DATABASE compat_latin1 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' \
             TEMPLATE template0",
        );
        latin_sql(
            "CREATE TABLE latin (id integer PRIMARY KEY, t text);
             INSERT INTO latin VALUES (1, 'café'), (2, 'Straße'), (3, 'niño'), (4, 'ÿ'),
                 (5, '¡Olé! ©®°±µ¶·¿ÀÆÇÐÑÖ×ØÞßàæçðñö÷øþÿ');",
        );
    });
    "compat_latin1"
}

const LATIN1: &[(&str, &str)] = &[("PGCLIENTENCODING", "LATIN1")];

/// SQL on the LATIN1 database directly, in UTF-8 (psql would otherwise
/// talk in the database's encoding when not on a terminal).
fn latin_sql(sql: &str) -> String {
    let utf8 = [("PGCLIENTENCODING", "UTF8")];
    let out = psql_env(
        &direct().on("compat_latin1"),
        &utf8,
        &["-v", "ON_ERROR_STOP=1", "-q", "-At", "-c", sql],
    );
    assert!(out.status.success(), "{sql}: {}", text(&out));
    String::from_utf8(out.stdout)
        .expect("UTF-8")
        .trim()
        .to_string()
}

#[test]
fn latin1_client_bytes_round_trip_unchanged() {
    let c = Compat::start();
    let database = latin1_db();
    let alice = c.unrestricted().on(database);
    let straight = direct().on(database);
    let dir = tempfile::tempdir().expect("tempdir");

    // Out: a query and \copy give the very bytes a direct connection gives.
    let select = [
        "-v",
        "ON_ERROR_STOP=1",
        "-At",
        "-c",
        "SELECT t FROM latin ORDER BY id",
    ];
    let via = psql_env(&alice, LATIN1, &select);
    let want = psql_env(&straight, LATIN1, &select);
    assert!(via.status.success(), "{}", text(&via));
    assert_eq!(via.stdout, want.stdout);
    let latin1_bytes: &[u8] = b"caf\xe9\nStra\xdfe\nni\xf1o\n\xff\n";
    assert!(via.stdout.starts_with(latin1_bytes), "{:?}", via.stdout);
    let enc = psql_env(&alice, LATIN1, &["-At", "-c", "SHOW client_encoding"]);
    assert_eq!(String::from_utf8_lossy(&enc.stdout).trim(), "LATIN1");

    let copy = |ep: &Endpoint, file: &Path| {
        let out = psql_env(
            ep,
            LATIN1,
            &[
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                &format!("\\copy latin TO '{}'", file.display()),
            ],
        );
        assert!(out.status.success(), "{}", text(&out));
        std::fs::read(file).expect("copy file")
    };
    let via_file = copy(&alice, &dir.path().join("via.txt"));
    assert_eq!(via_file, copy(&straight, &dir.path().join("direct.txt")));
    assert!(
        via_file.starts_with(b"1\tcaf\xe9\n2\tStra\xdfe\n"),
        "{via_file:?}"
    );

    // In: LATIN1 bytes sent through pgward, read back directly as UTF-8.
    let script = dir.path().join("insert.sql");
    std::fs::write(
        &script,
        b"INSERT INTO latin VALUES (100, 'caf\xe9 stra\xdfe ni\xf1o \xff');\n".as_slice(),
    )
    .expect("script");
    let rows = dir.path().join("rows.txt");
    std::fs::write(&rows, b"101\tGr\xfc\xdfe \xe0 \xc9mile\n".as_slice()).expect("rows");
    for args in [
        vec![
            "-v",
            "ON_ERROR_STOP=1",
            "-f",
            script.to_str().expect("utf8"),
        ],
        vec![
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            &format!("\\copy latin FROM '{}'", rows.display()),
        ],
    ] {
        let out = psql_env(&alice, LATIN1, &args);
        assert!(out.status.success(), "{}", text(&out));
    }
    assert_eq!(
        latin_sql("SELECT t FROM latin WHERE id >= 100 ORDER BY id"),
        "café straße niño ÿ\nGrüße à Émile"
    );
    // And the stored bytes are Latin-1, one byte per character.
    assert_eq!(
        latin_sql("SELECT octet_length(t) FROM latin WHERE id = 100"),
        "18"
    );
}
