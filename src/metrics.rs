//! Prometheus metrics, served by the admin HTTP listener at `/metrics`.
//!
//! Counters on the hot path are plain atomics (one increment per forwarded
//! chunk, not per message); only the latency histograms take a lock, once per
//! completed statement round trip.

use std::sync::{Arc, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub outcome: String,
}

/// An audit sink, by its configured name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabel {
    pub sink: String,
}

pub struct Metrics {
    registry: Registry,
    pub connections: Counter,
    pub active_sessions: Gauge,
    pub logins: Family<Outcome, Counter>,
    pub statements: Counter,
    pub statements_refused: Counter,
    pub bytes_from_clients: Counter,
    pub bytes_to_clients: Counter,
    pub cancel_requests: Counter,
    pub startups_refused: Counter,
    pub upstream_latency: Histogram,
    pub upstream_connect: Histogram,
    pub sink_delivered: Family<SinkLabel, Counter>,
    pub sink_failures: Family<SinkLabel, Counter>,
    pub sink_lag: Family<SinkLabel, Gauge>,
    audit: Arc<AuditCounters>,
}

/// The audit writer's own counters (atomics it owns), read at each scrape.
#[derive(Debug, Default)]
struct AuditCounters(OnceLock<Arc<crate::audit::writer::Counters>>);

impl Collector for AuditCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let Some(c) = self.0.get() else {
            return Ok(());
        };
        for (name, help, value) in [
            (
                "audit_events_stored",
                "Audit events stored in the chain",
                &c.stored,
            ),
            (
                "audit_events_dropped",
                "Statements run unrecorded (audit.on_failure: continue)",
                &c.dropped,
            ),
            ("audit_batches", "Audit store transactions", &c.batches),
            (
                "audit_store_failures",
                "Failed audit store writes (retried)",
                &c.failures,
            ),
            (
                "audit_alerts",
                "Alerts raised by the audit rules",
                &c.alerts,
            ),
            (
                "audit_spool_failures",
                "Failed audit spool writes (those statements waited for their commit)",
                &c.spool_failures,
            ),
            (
                "audit_events_recovered",
                "Spooled audit events stored at start after an unclean stop",
                &c.recovered,
            ),
        ] {
            let counter = ConstCounter::new(value.load(Relaxed));
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        let waiting = ConstGauge::new(c.waiting.load(Relaxed) as i64);
        let metric = encoder.encode_descriptor(
            "audit_events_waiting",
            "Audit events queued or being written, not yet stored in the chain",
            None,
            waiting.metric_type(),
        )?;
        waiting.encode(metric)?;
        Ok(())
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("pgward");
        let m = Metrics {
            registry: Registry::default(),
            connections: Counter::default(),
            active_sessions: Gauge::default(),
            logins: Family::default(),
            statements: Counter::default(),
            statements_refused: Counter::default(),
            bytes_from_clients: Counter::default(),
            bytes_to_clients: Counter::default(),
            cancel_requests: Counter::default(),
            startups_refused: Counter::default(),
            upstream_latency: Histogram::new(exponential_buckets(0.000_1, 2.0, 20)),
            upstream_connect: Histogram::new(exponential_buckets(0.000_5, 2.0, 16)),
            sink_delivered: Family::default(),
            sink_failures: Family::default(),
            sink_lag: Family::default(),
            audit: Arc::default(),
        };
        registry.register(
            "connections",
            "Client connections accepted",
            m.connections.clone(),
        );
        registry.register(
            "active_sessions",
            "Client connections currently open",
            m.active_sessions.clone(),
        );
        registry.register("logins", "Login attempts by outcome", m.logins.clone());
        registry.register(
            "statements",
            "Statements relayed (simple Query and extended Execute messages)",
            m.statements.clone(),
        );
        registry.register(
            "statements_refused",
            "Statements of restricted roles refused by the policy",
            m.statements_refused.clone(),
        );
        registry.register(
            "client_received_bytes",
            "Bytes received from clients after login",
            m.bytes_from_clients.clone(),
        );
        registry.register(
            "client_sent_bytes",
            "Bytes sent to clients after login",
            m.bytes_to_clients.clone(),
        );
        registry.register(
            "cancel_requests",
            "Cancel requests received",
            m.cancel_requests.clone(),
        );
        registry.register(
            "startups_refused",
            "Connections closed at once: too many logins in progress from their address",
            m.startups_refused.clone(),
        );
        registry.register(
            "upstream_latency_seconds",
            "Time from a client's Sync or Query to the database's ReadyForQuery",
            m.upstream_latency.clone(),
        );
        registry.register(
            "upstream_connect_seconds",
            "Time to open and authenticate a database connection",
            m.upstream_connect.clone(),
        );
        registry.register(
            "audit_sink_delivered",
            "Audit events delivered, by sink",
            m.sink_delivered.clone(),
        );
        registry.register(
            "audit_sink_failures",
            "Failed audit sink deliveries (each retried from the store), by sink",
            m.sink_failures.clone(),
        );
        registry.register(
            "audit_sink_lag",
            "Audit events stored but not yet delivered, by sink",
            m.sink_lag.clone(),
        );
        registry.register_collector(Box::new(Arc::clone(&m.audit)));
        Metrics { registry, ..m }
    }

    /// Exposes the audit writer's counters (once, at start).
    pub fn attach_audit(&self, counters: Arc<crate::audit::writer::Counters>) {
        let _ = self.audit.0.set(counters);
    }

    pub fn login(&self, outcome: &str) {
        self.logins
            .get_or_create(&Outcome {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    fn sink(name: &str) -> SinkLabel {
        SinkLabel {
            sink: name.to_string(),
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl crate::audit::sinks::Report for Metrics {
    fn delivered(&self, sink: &str, events: u64) {
        self.sink_delivered
            .get_or_create(&Metrics::sink(sink))
            .inc_by(events);
    }

    fn failed(&self, sink: &str) {
        self.sink_failures.get_or_create(&Metrics::sink(sink)).inc();
    }

    fn lag(&self, sink: &str, events: u64) {
        let events = i64::try_from(events).unwrap_or(i64::MAX);
        self.sink_lag
            .get_or_create(&Metrics::sink(sink))
            .set(events);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_registered_metrics() {
        let m = Metrics::new();
        m.connections.inc();
        m.login("ok");
        m.upstream_latency.observe(0.002);
        let text = m.render();
        assert!(text.contains("pgward_connections_total 1"), "{text}");
        assert!(
            text.contains("pgward_logins_total{outcome=\"ok\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("pgward_upstream_latency_seconds_count 1"),
            "{text}"
        );
    }
}
