//! The client compatibility suite: real client programs — psql, pg_dump,
//! pgbench, JDBC, psycopg 3, asyncpg, node-postgres, SQLAlchemy,
//! tokio-postgres — connect through pgward over TLS, once as an
//! unrestricted role (their results must equal the same client's results
//! on a direct connection) and once as a masked, row-filtered role
//! (introspection and ordinary queries work; the data comes back masked;
//! a refused statement is an ordinary 42501 error and the connection goes
//! on). The programs live in `tests/clients/`; `tests/clients/setup.sh`
//! installs what they need (`.ci/run` calls it).

#[allow(dead_code)]
#[path = "../e2e/harness.rs"]
mod harness;

mod fixture;

mod dump;
mod jdbc;
mod node;
mod psql;
mod python;
mod table;
mod tokio_pg;
