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
    // 3: the access lifecycle. A second factor per person (TOTP secret,
    // the last time step used so a code works once, recovery codes kept
    // hashed); access requests and their approvals; time-boxed grants
    // (from an operator, an approved request, or break-glass); client
    // certificates pgward's CA issued.
    "ALTER TABLE users ADD COLUMN totp_secret TEXT;
     ALTER TABLE users ADD COLUMN totp_last_step INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE users ADD COLUMN mfa_required INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE users ADD COLUMN service INTEGER NOT NULL DEFAULT 0;
     CREATE TABLE recovery_codes (
        user    TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
        hash    TEXT NOT NULL,
        used_at INTEGER,
        PRIMARY KEY (user, hash)
     );
     CREATE TABLE requests (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        user        TEXT NOT NULL,
        role        TEXT NOT NULL,
        database    TEXT,
        duration_us INTEGER NOT NULL,
        reason      TEXT NOT NULL,
        kind        TEXT NOT NULL,
        status      TEXT NOT NULL,
        created_at  INTEGER NOT NULL,
        expires_at  INTEGER NOT NULL,
        decided_at  INTEGER,
        reviewed_by TEXT,
        reviewed_at INTEGER,
        review_note TEXT
     );
     CREATE INDEX requests_status ON requests(status, expires_at);
     CREATE TABLE approvals (
        request  INTEGER NOT NULL REFERENCES requests(id),
        approver TEXT NOT NULL,
        decision TEXT NOT NULL,
        at       INTEGER NOT NULL,
        note     TEXT,
        PRIMARY KEY (request, approver)
     );
     CREATE TABLE grants (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        user          TEXT NOT NULL,
        role          TEXT NOT NULL,
        database      TEXT,
        starts_at     INTEGER NOT NULL,
        expires_at    INTEGER NOT NULL,
        reason        TEXT NOT NULL,
        granted_by    TEXT NOT NULL,
        kind          TEXT NOT NULL,
        request       INTEGER REFERENCES requests(id),
        revoked_at    INTEGER,
        revoked_by    TEXT,
        revoke_reason TEXT
     );
     CREATE INDEX grants_user ON grants(user, expires_at);
     CREATE TABLE certificates (
        serial     TEXT PRIMARY KEY,
        user       TEXT NOT NULL,
        issued_at  INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        service    INTEGER NOT NULL DEFAULT 0,
        issued_by  TEXT NOT NULL,
        revoked_at INTEGER
     );
     CREATE INDEX certificates_user ON certificates(user);",
];
