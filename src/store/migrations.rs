//! Schema migrations for the SQLite store, applied in order and recorded in
//! `PRAGMA user_version`. Append new steps; never edit an old one.

pub const MIGRATIONS: &[&str] = &[
    // 1: people and their roles, login failures for lockout.
    "CREATE TABLE users (
        name          TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        disabled      INTEGER NOT NULL DEFAULT 0,
        attrs         TEXT NOT NULL DEFAULT '{}',
        created_at    INTEGER NOT NULL,
        last_login    INTEGER
    );
    CREATE TABLE user_roles (
        user     TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
        role     TEXT NOT NULL,
        position INTEGER NOT NULL,
        PRIMARY KEY (user, role)
    );
    CREATE TABLE login_failures (
        name TEXT NOT NULL,
        at   INTEGER NOT NULL
    );
    CREATE INDEX login_failures_name_at ON login_failures(name, at);",
    // 2: password checks in flight are recorded next to failures, so
    // parallel guesses cannot overtake the lockout; pruning old rows of every
    // name uses the time alone.
    "ALTER TABLE login_failures ADD COLUMN pending INTEGER NOT NULL DEFAULT 0;
     CREATE INDEX login_failures_at ON login_failures(at);",
];
