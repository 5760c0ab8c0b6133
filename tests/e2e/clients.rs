//! Real client programs through pgward: psql and pgbench.

use std::process::Command;

use crate::harness::{db, psql, Proxy, PASSWORD};

#[test]
fn psql_meta_commands_match_a_direct_connection() {
    let proxy = Proxy::start();
    proxy.add_user("alice", &["dba"]);
    let via = proxy.conninfo("alice", PASSWORD);
    let direct = db().conninfo("clinic");
    for cmd in ["\\dt", "\\d patients", "\\dn", "\\df int4pl", "\\l clinic"] {
        let a = psql(&via, &["-c", cmd]);
        let b = psql(&direct, &["-c", cmd]);
        assert!(
            a.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&a.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&a.stdout),
            String::from_utf8_lossy(&b.stdout),
            "{cmd}"
        );
    }
    let out = psql(&via, &["-c", "\\conninfo"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SSL connection (protocol: TLSv1.3"), "{text}");
}

#[test]
fn psql_copy_both_ways() {
    let proxy = Proxy::start();
    proxy.add_user("alice", &["dba"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("visits.csv");
    let via = proxy.conninfo("alice", PASSWORD);
    let out = psql(
        &via,
        &[
            "-c",
            &format!(
                "\\copy (select * from visits order by id) to '{}' csv",
                file.display()
            ),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap().lines().count(),
        3000
    );
    let script = format!(
        "create temp table v (like visits); \\copy v from '{}' csv\nselect count(*) from v;",
        file.display()
    );
    let out = psql(&via, &["-c", &script.replace('\n', " ")]);
    let out = if out.status.success() {
        out
    } else {
        // psql runs a backslash command to the end of its -c argument; use stdin.
        let mut child = Command::new("psql")
            .arg(&via)
            .args(["-X", "-At", "-v", "ON_ERROR_STOP=1"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout)
        .trim()
        .ends_with("3000"));
}

#[test]
fn pgbench_initialises_and_runs_in_every_protocol() {
    let proxy = Proxy::start();
    proxy.add_user("bench", &["dba"]);
    let conn = proxy.pgbench_database("bench", "bench");
    for protocol in ["simple", "extended", "prepared"] {
        let run = Command::new("pgbench")
            .args(["-n", "-c", "4", "-j", "2", "-t", "200", "-M", protocol])
            .arg(&conn)
            .output()
            .expect("pgbench");
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert!(
            run.status.success(),
            "{protocol}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        assert!(
            stdout.contains("number of transactions actually processed: 800/800"),
            "{protocol}: {stdout}"
        );
        assert!(
            stdout.contains("number of failed transactions: 0"),
            "{protocol}: {stdout}"
        );
    }
}
