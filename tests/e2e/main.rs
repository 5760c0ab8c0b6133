//! End-to-end tests: real PostgreSQL, real `pgward serve`, real clients
//! (tokio-postgres, psql, pgbench) and raw protocol bytes for bad input.

mod harness;
mod raw;

mod access;
mod audit;
mod audit_cli;
mod audit_sinks;
mod auth;
mod bad_input;
mod cancel;
mod certs;
mod clients;
mod demo;
mod masked_use;
mod masked_writes;
mod masks;
mod mfa;
mod policy_cli;
mod relay;
mod restricted;
mod sessions;
mod upstream;
