//! pg_dump, pg_restore and pgbench through pgward over TLS.
//!
//! pg_dump is the harshest catalog client there is: it reads nearly every
//! system catalog in a repeatable-read, read-only transaction, locks the
//! tables it dumps and streams each one with `COPY … TO stdout`. Through
//! pgward as the unrestricted `alice` the dump must be byte-for-byte the
//! dump taken directly (plain and custom format), and a dump restored
//! through pgward (psql for plain, pg_restore for custom) must produce a
//! database whose own dump is again identical. As the masked analyst a
//! dump either fails with a clear message or holds masked data only: a
//! real SSN or e-mail address in it would be a leak.
//!
//! pgbench covers the other end: many short transactions, in the simple,
//! extended and prepared protocols.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use std::sync::OnceLock;

use crate::fixture::{direct, run, run_ok, sample_db, Compat, Endpoint};
use crate::harness::db;
use crate::psql::{psql_out, text};

const LIMIT: Duration = Duration::from_secs(120);

/// pg_dump's `\restrict` key is random unless given; the same key makes
/// two dumps comparable.
const KEY: &str = "--restrict-key=pgwardcompat";

fn pg_dump(ep: &Endpoint, args: &[&str]) -> String {
    let mut cmd = Command::new("pg_dump");
    if !args.contains(&"-Fc") {
        cmd.arg(KEY);
    }
    cmd.args(args);
    run_ok(cmd, ep, LIMIT)
}

/// A copy of `compat` that only the dump tests read: other tests of this
/// binary add tables to `compat` while they run.
const DUMPED: &str = "compat_dumped";

fn dumped() -> &'static str {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| sample_db(DUMPED));
    DUMPED
}

/// Dumps [`DUMPED`] through pgward (as alice) and directly with `dump`;
/// the results must be identical. The direct dump is taken before and
/// after, and only a run in which the database did not change counts.
fn dump_matches_direct<T: PartialEq + std::fmt::Debug>(
    c: &Compat,
    what: &str,
    dump: impl Fn(&Endpoint) -> T,
) -> T {
    let name = dumped();
    for _ in 0..6 {
        let before = dump(&direct().on(name));
        let via = dump(&c.unrestricted().on(name));
        let after = dump(&direct().on(name));
        if before == after {
            if via != before {
                let (a, b) = (format!("{via:?}"), format!("{before:?}"));
                let at = a
                    .chars()
                    .zip(b.chars())
                    .position(|(x, y)| x != y)
                    .unwrap_or(a.len().min(b.len()));
                let from = at.saturating_sub(200);
                panic!(
                    "{what}: pgward's dump differs from the direct one at char {at}:\n\
                     --- via pgward\n{}\n--- direct\n{}",
                    a.chars().skip(from).take(500).collect::<String>(),
                    b.chars().skip(from).take(500).collect::<String>()
                );
            }
            return via;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("{what}: the database kept changing; no stable comparison");
}

/// A new, empty database, made directly.
fn create_db(name: &str) {
    db().sql("postgres", &format!("CREATE DATABASE {name}"));
}

#[test]
fn plain_dump_equals_direct_and_restores_through_pgward() {
    let c = Compat::start();
    let dump = dump_matches_direct(&c, "pg_dump (plain)", |ep| pg_dump(ep, &[]));
    for needle in [
        "CREATE TYPE public.mood AS ENUM",
        "CREATE VIEW public.clinic_counts",
        "COPY public.patients (id, clinic_id, name, ssn, email, dob, phone) FROM stdin;",
        "patient1@example.org",
    ] {
        assert!(dump.contains(needle), "dump lacks {needle:?}");
    }

    // Restore through pgward with psql, into an empty database.
    create_db("compat_restore");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("compat.sql");
    std::fs::write(&file, &dump).expect("write dump");
    let target = c.unrestricted().on("compat_restore");
    psql_out(&target, &["-q", "-f", file.to_str().expect("utf8")]);
    assert_eq!(pg_dump(&direct().on("compat_restore"), &[]), dump);
    assert_eq!(
        db().sql(
            "compat_restore",
            "SELECT count(*), sum(hashtext(p::text)) FROM patients p"
        ),
        db().sql(
            DUMPED,
            "SELECT count(*), sum(hashtext(p::text)) FROM patients p"
        )
    );
}

/// A custom-format archive's contents, as plain SQL and as its table of
/// contents (without the line saying when it was made).
fn archive(ep: &Endpoint, file: &Path) -> (String, String) {
    pg_dump(ep, &["-Fc", "-f", file.to_str().expect("utf8")]);
    let sql = pg_restore(&[KEY, "-f", "-", file.to_str().expect("utf8")]);
    let toc = pg_restore(&["-l", file.to_str().expect("utf8")])
        .lines()
        .filter(|l| !l.starts_with(";     Archive created at"))
        .collect::<Vec<_>>()
        .join("\n");
    (sql, toc)
}

/// pg_restore reading an archive only (no connection).
fn pg_restore(args: &[&str]) -> String {
    let out = Command::new("pg_restore")
        .args(args)
        .output()
        .expect("pg_restore");
    assert!(out.status.success(), "pg_restore {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn custom_format_dump_equals_direct_and_pg_restore_works_through_pgward() {
    let c = Compat::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("compat.dump");
    let (sql, toc) = dump_matches_direct(&c, "pg_dump -Fc", |ep| archive(ep, &file));
    assert!(toc.contains("TABLE DATA public patients"), "{toc}");
    // `archive` leaves the last (direct) dump in `file`; restore the one
    // taken through pgward, with pg_restore through pgward.
    archive(&c.unrestricted().on(DUMPED), &file);
    create_db("compat_restore_fc");
    let target = c.unrestricted().on("compat_restore_fc");
    let mut cmd = Command::new("pg_restore");
    cmd.args(["--exit-on-error", "-d", "compat_restore_fc"])
        .arg(&file);
    run_ok(cmd, &target, LIMIT);
    let restored = pg_dump(&direct().on("compat_restore_fc"), &[]);
    let want = pg_restore(&[KEY, "-f", "-", file.to_str().expect("utf8")]);
    assert_eq!(restored, want);
    assert!(sql.contains("CREATE TYPE public.mood AS ENUM"), "{sql}");
}

#[test]
fn pg_dump_as_the_masked_role_never_shows_real_values() {
    let c = Compat::start();
    let ann = c.masked();
    let mut cmd = Command::new("pg_dump");
    cmd.arg(KEY);
    let out = run(&mut cmd, &ann, LIMIT);
    let all = text(&out);
    // Whatever happened, no protected value may appear: not in the dump,
    // not in an error message.
    let secrets = db().sql("compat", "SELECT ssn, email, name FROM patients");
    for line in secrets.lines() {
        for value in line.split('|') {
            assert!(!all.contains(value), "{value} leaked:\n{all}");
        }
    }
    assert!(!all.contains("clinical note"), "visit notes leaked:\n{all}");
    if out.status.success() {
        // A dump of what the analyst may see: masked rows of clinic 1.
        let dump = String::from_utf8_lossy(&out.stdout);
        assert!(dump.contains("***@example.org"), "{dump}");
        assert!(dump.contains("*******"), "{dump}");
    } else {
        // A clear refusal: pg_dump names the failing query and pgward
        // says why.
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("pg_dump: error:"), "{err}");
        assert!(
            err.contains("ERROR:  pgward:") && err.contains("not allowed for role \"analyst\""),
            "the reason is pgward's: {err}"
        );
    }
}

/// 2 clients × 200 transactions of pgbench's built-in script (`extra`
/// picks another) in each protocol, all processed, none failed.
fn pgbench_every_protocol(ep: &Endpoint, extra: &[&str]) {
    for protocol in ["simple", "extended", "prepared"] {
        let mut cmd = Command::new("pgbench");
        cmd.args(["-n", "-c", "2", "-j", "2", "-t", "200", "-M", protocol])
            .args(extra);
        let out = run_ok(cmd, ep, LIMIT);
        assert!(
            out.contains("number of transactions actually processed: 400/400"),
            "{protocol}: {out}"
        );
        assert!(
            out.contains("number of failed transactions: 0"),
            "{protocol}: {out}"
        );
    }
}

#[test]
fn pgbench_initialises_and_runs_in_every_protocol() {
    let c = Compat::start();
    create_db("compat_bench");
    let bench = c.unrestricted().on("compat_bench");
    let mut init = Command::new("pgbench");
    init.args(["-i", "-s", "1", "-q"]);
    run_ok(init, &bench, LIMIT);
    assert_eq!(
        db().sql("compat_bench", "SELECT count(*) FROM pgbench_accounts"),
        "100000"
    );
    pgbench_every_protocol(&bench, &[]);
    // pgbench_history got one row per transaction.
    assert_eq!(
        db().sql("compat_bench", "SELECT count(*) FROM pgbench_history"),
        "1200"
    );
}

#[test]
fn pgbench_select_only_runs_as_the_masked_role_and_init_is_refused() {
    let c = Compat::start();
    create_db("compat_bench_ann");
    let mut init = Command::new("pgbench");
    init.args(["-i", "-s", "1", "-q"]);
    run_ok(init, &direct().on("compat_bench_ann"), LIMIT);
    db().sql(
        "compat_bench_ann",
        "GRANT SELECT ON ALL TABLES IN SCHEMA public TO trust_user",
    );
    let ann = c.masked().on("compat_bench_ann");
    // The analyst may read (a masked, filtered pgbench_accounts), not write.
    let mut init = Command::new("pgbench");
    init.args(["-i", "-s", "1", "-q"]);
    let out = run(&mut init, &ann, LIMIT);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "pgbench -i as the analyst: {err}");
    assert!(
        err.contains("pgward: ") && err.contains("not allowed for role \"analyst\""),
        "{err}"
    );
    assert_eq!(
        db().sql("compat_bench_ann", "SELECT count(*) FROM pgbench_accounts"),
        "100000",
        "nothing dropped"
    );
    pgbench_every_protocol(&ann, &["-S"]);
}
