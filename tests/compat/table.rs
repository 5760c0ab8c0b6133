//! The README's compatibility table is checked against this suite: every
//! test the table cites exists in this binary, and every test of the suite
//! is cited. `.ci/run` runs the whole binary, so a green run means each
//! claim in the table was just shown by the tests it names.

use std::collections::BTreeSet;
use std::process::Command;

use crate::fixture::root;

/// The tests the README's "Client compatibility" table names.
fn cited() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let section = readme
        .split("\n## Client compatibility\n")
        .nth(1)
        .expect("README has a \"## Client compatibility\" section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut names = BTreeSet::new();
    for line in section.lines().filter(|l| l.starts_with('|')) {
        for cell in line.split('`').skip(1).step_by(2) {
            if cell.contains("::") && !cell.contains(' ') {
                names.insert(cell.to_string());
            }
        }
    }
    names
}

/// The tests in this binary, as `module::name`.
fn present() -> BTreeSet<String> {
    let exe = std::env::current_exe().expect("test binary");
    let out = Command::new(exe)
        .args(["--list", "--format", "terse"])
        .output()
        .expect("list tests");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .filter(|name| !name.starts_with("table::"))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_readme_table_cites_exactly_the_tests_of_the_suite() {
    let cited = cited();
    let present = present();
    assert!(present.len() > 20, "the suite lists its tests: {present:?}");
    let missing: Vec<_> = cited.difference(&present).collect();
    assert!(
        missing.is_empty(),
        "the README cites tests that do not exist: {missing:?}"
    );
    let uncited: Vec<_> = present.difference(&cited).collect();
    assert!(
        uncited.is_empty(),
        "tests missing from the README's compatibility table: {uncited:?}"
    );
}
