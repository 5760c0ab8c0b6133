//! Run-time settings a restricted role may change with SET / RESET.
//!
//! Everything here only changes how values are formatted or how long
//! statements may run. Not here, deliberately: `search_path` (pgward pins
//! it so names resolve the way the analyzer resolved them),
//! `standard_conforming_strings` and `backslash_quote` (they change how the
//! database reads the literals pgward writes), `client_encoding` (pinned to
//! UTF8: in SJIS, BIG5 or GBK a multibyte character can end in a quote or
//! backslash byte, so the database would split the text differently from
//! the analyzer; only `UTF8` itself may be set), `role` and
//! `session_authorization`, and anything that changes planning or logging.

const SAFE: &[&str] = &[
    "datestyle",
    "intervalstyle",
    "timezone",
    "time zone",
    "extra_float_digits",
    "bytea_output",
    "xmloption",
    "xmlbinary",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "idle_session_timeout",
    "transaction_timeout",
    "default_transaction_isolation",
    "default_transaction_read_only",
    "default_transaction_deferrable",
    "transaction_isolation",
    "transaction_read_only",
    "transaction_deferrable",
    "lc_messages",
    "lc_monetary",
    "lc_numeric",
    "lc_time",
    "client_min_messages",
    "work_mem",
    "jit",
    "geqo",
    "cursor_tuple_fraction",
    "row_security",
];

/// Whether an encoding name (as written in SET or SET NAMES) is UTF8.
pub fn is_utf8(value: &str) -> bool {
    let v: String = value
        .trim_matches(|c| c == '\'' || c == '"')
        .chars()
        .filter(|c| *c != '-' && *c != '_')
        .collect();
    v.eq_ignore_ascii_case("utf8") || v.eq_ignore_ascii_case("unicode")
}

/// Whether `name` (lowercase) may be SET by a restricted role.
pub fn is_safe(name: &str) -> bool {
    SAFE.contains(&name)
}

/// Startup parameters forwarded for a restricted role; others are dropped.
pub fn is_safe_startup(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    is_safe(&name)
}
