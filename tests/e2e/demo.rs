//! The README's first command: `pgward demo` starts, serves the sample data
//! to psql with the line it prints, and cleans everything up on Ctrl+C.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::harness::{psql, PGWARD};

#[test]
fn demo_serves_the_clinic_data_and_cleans_up_on_ctrl_c() {
    let port = pgward::pgcluster::free_port().unwrap();
    let mut child = Command::new(PGWARD)
        .args(["demo", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pgward demo");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut printed = Vec::new();
    let psql_line = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("demo printed no psql line; got:\n{}", printed.join("\n")));
        printed.push(line.clone());
        if line.trim_start().starts_with("PGPASSWORD=") {
            break line;
        }
    };
    let config_line = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("config line");
        if let Some(path) = line.trim().strip_prefix("config: ") {
            break path.to_string();
        }
    };
    let work_dir = std::path::Path::new(&config_line)
        .parent()
        .unwrap()
        .to_path_buf();
    assert!(work_dir.exists());

    // Run exactly what the demo told us to paste.
    let line = psql_line.trim();
    let password = line
        .strip_prefix("PGPASSWORD=")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap();
    let conninfo = line.split('"').nth(1).expect("quoted conninfo");
    assert!(conninfo.contains("sslmode=verify-full"), "{conninfo}");
    let out = psql(
        &format!("{conninfo} password={password}"),
        &["-c", "select count(*) from patients"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1000");
    // The masked analyst the demo also creates: clinic 1 only, SSNs masked.
    let ann = conninfo.replace("user=alice", "user=ann");
    let out = psql(
        &format!("{ann} password={password}"),
        &[
            "-At",
            "-c",
            "select count(*), bool_and(ssn like '*******%'), bool_and(email like '***@%') from patients",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "333|t|t");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "demo did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "demo exited with {status}");
    assert!(!work_dir.exists(), "{} removed", work_dir.display());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nothing listens any more"
    );
}
