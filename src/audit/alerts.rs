//! Alert rules: patterns in the event stream a compliance officer wants to
//! hear about at once — one statement returning a mass of records, a person
//! running far more statements than usual, a burst of refusals, activity
//! outside allowed hours, break-glass use, locked accounts.
//!
//! The writer thread runs every event through [`Alerter::observe`] just
//! before storing its batch, and stores the alerts it raises right after
//! the events that raised them, in the same transaction: an alert is in the
//! chain exactly when its cause is. Alerts leave pgward through the sinks
//! (a webhook sink with `kinds: [alert]`, syslog at severity warning).
//!
//! Rules look only at the events themselves (their time, user, session,
//! rows, decision, outcome), never at the clock, so a replay of the same
//! events raises the same alerts. State is small and bounded: per user one
//! window, per session one flag.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::event::{Decision, Event, Kind, SessionInfo};

/// `audit.alerts` in the config.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertRules {
    /// One statement returning or changing more rows than this.
    pub rows_per_statement: Option<u64>,
    /// More statements than this from one person in one one-minute window
    /// (a window starts with a person's first statement after the last
    /// window ended; a burst across two windows can stay under it).
    pub statements_per_minute: Option<u64>,
    /// `count` denied statements from one person within `within`.
    pub denied: Option<Burst>,
    /// Allowed hours: activity outside them raises one alert per session.
    pub hours: Option<Hours>,
    /// Sessions whose role comes from break-glass (on by default).
    pub break_glass: bool,
    /// Logins refused because the account is locked (on by default; one
    /// alert per account per `lockout_quiet`).
    pub lockouts: bool,
    #[serde(with = "humantime_serde")]
    pub lockout_quiet: Duration,
}

impl Default for AlertRules {
    fn default() -> Self {
        AlertRules {
            rows_per_statement: None,
            statements_per_minute: None,
            denied: None,
            hours: None,
            break_glass: true,
            lockouts: true,
            lockout_quiet: Duration::from_secs(15 * 60),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Burst {
    pub count: usize,
    #[serde(with = "humantime_serde")]
    pub within: Duration,
}

/// Allowed hours, e.g. `{from: "07:00", to: "19:00", days: [mon, tue, wed,
/// thu, fri], utc_offset: "+01:00"}`. `from` later than `to` wraps past
/// midnight (a night shift). The offset is fixed: daylight saving time is
/// not followed.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hours {
    pub from: ClockTime,
    pub to: ClockTime,
    #[serde(default = "all_days")]
    pub days: Vec<Weekday>,
    #[serde(default)]
    pub utc_offset: UtcOffset,
    /// Roles the hours apply to; all roles when empty.
    #[serde(default)]
    pub roles: Vec<String>,
}

/// Monday first.
const WEEK: [Weekday; 7] = {
    use Weekday::*;
    [Mon, Tue, Wed, Thu, Fri, Sat, Sun]
};

fn all_days() -> Vec<Weekday> {
    WEEK.to_vec()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

/// Minutes after midnight, written `HH:MM`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct ClockTime(u32);

impl TryFrom<String> for ClockTime {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a time of day; write HH:MM, e.g. \"07:30\"");
        let (h, m) = s.split_once(':').ok_or_else(bad)?;
        let h: u32 = h.parse().map_err(|_| bad())?;
        let m: u32 = m.parse().map_err(|_| bad())?;
        if h > 24 || m > 59 || (h == 24 && m > 0) {
            return Err(bad());
        }
        Ok(ClockTime(h * 60 + m))
    }
}

/// Seconds east of UTC, written `+HH:MM` or `-HH:MM`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct UtcOffset(i64);

impl TryFrom<String> for UtcOffset {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a UTC offset; write +HH:MM or -HH:MM");
        let (sign, rest) = match s.as_bytes().first() {
            Some(b'+') => (1, &s[1..]),
            Some(b'-') => (-1, &s[1..]),
            _ => return Err(bad()),
        };
        let ClockTime(minutes) = ClockTime::try_from(rest.to_string()).map_err(|_| bad())?;
        if minutes > 14 * 60 {
            return Err(bad());
        }
        Ok(UtcOffset(sign * i64::from(minutes) * 60))
    }
}

impl AlertRules {
    /// Checks the parts serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.rows_per_statement == Some(0) || self.statements_per_minute == Some(0) {
            return Err("audit.alerts: thresholds must be at least 1".into());
        }
        if let Some(b) = &self.denied {
            if b.count == 0 || b.within.is_zero() {
                return Err("audit.alerts.denied: count and within must be above zero".into());
            }
        }
        if let Some(h) = &self.hours {
            if h.from == h.to {
                return Err(
                    "audit.alerts.hours: from and to are equal; remove `hours` to allow all day"
                        .into(),
                );
            }
            if h.days.is_empty() {
                return Err("audit.alerts.hours.days is empty: no time would be allowed".into());
            }
        }
        Ok(())
    }

    /// The rules that look at statement events (useless with
    /// `audit.record_statements: false`).
    pub fn on_statements(&self) -> bool {
        self.rows_per_statement.is_some()
            || self.statements_per_minute.is_some()
            || self.denied.is_some()
    }

    /// Whether any rule is on (the writer skips the work otherwise).
    pub fn any(&self) -> bool {
        self.rows_per_statement.is_some()
            || self.statements_per_minute.is_some()
            || self.denied.is_some()
            || self.hours.is_some()
            || self.break_glass
            || self.lockouts
    }
}

impl Hours {
    fn allows(&self, time_us: i64) -> bool {
        let local = time_us.div_euclid(1_000_000) + self.utc_offset.0;
        let days = local.div_euclid(86_400);
        let minute = (local.rem_euclid(86_400) / 60) as u32;
        // 1970-01-01 was a Thursday.
        let weekday = WEEK[((days + 3).rem_euclid(7)) as usize];
        let (from, to) = (self.from.0, self.to.0);
        let in_window = if from < to {
            minute >= from && minute < to
        } else {
            minute >= from || minute < to
        };
        // A window past midnight belongs to the day it started on.
        let day = if from > to && minute < to {
            WEEK[((days + 2).rem_euclid(7)) as usize]
        } else {
            weekday
        };
        in_window && self.days.contains(&day)
    }

    fn applies_to(&self, role: Option<&str>) -> bool {
        self.roles.is_empty() || role.is_some_and(|r| self.roles.iter().any(|x| x == r))
    }
}

/// One person's statements in the current one-minute window.
struct Rate {
    start_us: i64,
    count: u64,
    fired: bool,
}

const MINUTE_US: i64 = 60_000_000;

/// Rule state, owned by the writer thread.
pub struct Alerter {
    rules: AlertRules,
    instance: String,
    rates: HashMap<String, Rate>,
    denied: HashMap<String, VecDeque<i64>>,
    outside: HashSet<u64>,
    lockouts: HashMap<String, i64>,
    seen: u64,
}

/// Per-user and per-session state beyond this many entries is cleared
/// (only windows that have ended are lost; see [`Alerter::tidy`]).
const MAX_TRACKED: usize = 100_000;

impl Alerter {
    pub fn new(rules: AlertRules, instance: &str) -> Alerter {
        Alerter {
            rules,
            instance: instance.to_string(),
            rates: HashMap::new(),
            denied: HashMap::new(),
            outside: HashSet::new(),
            lockouts: HashMap::new(),
            seen: 0,
        }
    }

    pub fn is_active(&self) -> bool {
        self.rules.any()
    }

    /// Looks at one event; pushes the alerts it raises onto `out`.
    pub fn observe(&mut self, e: &Event, out: &mut Vec<Event>) {
        if e.kind == Kind::Alert {
            return;
        }
        self.seen += 1;
        if self.seen % 65_536 == 0 {
            self.tidy(e.time_us);
        }
        let user = e.user().unwrap_or("");
        let role = e.who.as_ref().and_then(|w| w.role.as_deref());
        match e.kind {
            Kind::Statement => {
                if let (Some(limit), Some(rows)) = (self.rules.rows_per_statement, e.rows) {
                    if rows > limit {
                        out.push(self.alert(
                            e,
                            "mass_rows",
                            format!("one statement returned or changed {rows} rows (alert above {limit})"),
                        ));
                    }
                }
                if let Some(limit) = self.rules.statements_per_minute {
                    if let Some(n) = self.count_rate(user, e.time_us, limit) {
                        out.push(self.alert(
                            e,
                            "statement_rate",
                            format!(
                                "{user} ran {n} statements within one minute (alert above {limit})"
                            ),
                        ));
                    }
                }
                if e.decision == Some(Decision::Denied) {
                    if let Some(burst) = self.rules.denied.clone() {
                        if self.count_denied(user, e.time_us, &burst) {
                            out.push(self.alert(
                                e,
                                "denied_burst",
                                format!(
                                    "{user} had {} statements denied within {}",
                                    burst.count,
                                    humantime::format_duration(burst.within)
                                ),
                            ));
                        }
                    }
                }
                self.check_hours(e, role, out);
            }
            Kind::Login => {
                if self.rules.lockouts && e.outcome.as_deref() == Some("locked") {
                    let quiet = self.rules.lockout_quiet.as_micros() as i64;
                    let last = self.lockouts.get(user).copied();
                    if last.map_or(true, |t| e.time_us - t >= quiet) {
                        self.lockouts.insert(user.to_string(), e.time_us);
                        out.push(self.alert(
                            e,
                            "lockout",
                            format!("a login as {user} was refused: the account is locked after repeated failed logins"),
                        ));
                    }
                }
            }
            Kind::SessionStart => {
                let via = e.who.as_ref().and_then(|w| w.via.as_deref());
                if self.rules.break_glass && via.is_some_and(|v| v.starts_with("break-glass")) {
                    out.push(self.alert(
                        e,
                        "break_glass",
                        format!(
                            "{user} started a session as {} through break-glass",
                            role.unwrap_or("?")
                        ),
                    ));
                }
                self.check_hours(e, role, out);
            }
            Kind::SessionEnd => {
                if let Some(s) = e.who.as_ref().and_then(|w| w.session) {
                    self.outside.remove(&s);
                }
            }
            Kind::Admin | Kind::Alert => {}
        }
    }

    /// The count when this statement takes `user` above `limit` for the
    /// first time in the current window.
    fn count_rate(&mut self, user: &str, t: i64, limit: u64) -> Option<u64> {
        let rate = self.rates.entry(user.to_string()).or_insert(Rate {
            start_us: t,
            count: 0,
            fired: false,
        });
        if t - rate.start_us >= MINUTE_US {
            *rate = Rate {
                start_us: t,
                count: 0,
                fired: false,
            };
        }
        rate.count += 1;
        if rate.count > limit && !rate.fired {
            rate.fired = true;
            return Some(rate.count);
        }
        None
    }

    /// Whether this denial completes a burst (the burst then starts over).
    fn count_denied(&mut self, user: &str, t: i64, burst: &Burst) -> bool {
        let within = burst.within.as_micros() as i64;
        let times = self.denied.entry(user.to_string()).or_default();
        times.push_back(t);
        while times.front().is_some_and(|&first| t - first >= within) {
            times.pop_front();
        }
        if times.len() >= burst.count {
            times.clear();
            return true;
        }
        false
    }

    fn check_hours(&mut self, e: &Event, role: Option<&str>, out: &mut Vec<Event>) {
        let Some(hours) = &self.rules.hours else {
            return;
        };
        if !hours.applies_to(role) || hours.allows(e.time_us) {
            return;
        }
        let session = e.who.as_ref().and_then(|w| w.session);
        if let Some(s) = session {
            if !self.outside.insert(s) {
                return;
            }
        }
        let what = if e.kind == Kind::SessionStart {
            "a session started"
        } else {
            "a statement ran"
        };
        let user = e.user().unwrap_or("");
        out.push(self.alert(
            e,
            "outside_hours",
            format!("{what} outside the allowed hours for {user}"),
        ));
    }

    fn alert(&self, cause: &Event, rule: &str, detail: String) -> Event {
        let mut a = Event::new(Kind::Alert, &self.instance);
        a.time_us = cause.time_us;
        a.who = cause.who.clone().or_else(|| {
            Some(Arc::new(SessionInfo {
                user: cause.user().map(str::to_string),
                ..SessionInfo::default()
            }))
        });
        a.action = Some(rule.to_string());
        a.detail = Some(detail);
        a.fingerprint.clone_from(&cause.fingerprint);
        a.rows = cause.rows;
        a
    }

    /// Forgets windows that have ended, so state stays bounded by the
    /// number of people active recently.
    fn tidy(&mut self, now: i64) {
        self.rates.retain(|_, r| now - r.start_us < MINUTE_US);
        if let Some(b) = &self.rules.denied {
            let within = b.within.as_micros() as i64;
            self.denied
                .retain(|_, t| t.back().is_some_and(|&last| now - last < within));
        }
        let quiet = self.rules.lockout_quiet.as_micros() as i64;
        self.lockouts.retain(|_, &mut t| now - t < quiet);
        if self.outside.len() > MAX_TRACKED {
            // Sessions that ended without an end event (a crash): an
            // ongoing one may alert a second time, never zero times.
            self.outside.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_000_000_000; // 2023-11-14 22:13:20 UTC, a Tuesday

    fn who(user: &str, session: u64, role: &str, via: Option<&str>) -> Arc<SessionInfo> {
        Arc::new(SessionInfo {
            session: Some(session),
            user: Some(user.into()),
            role: Some(role.into()),
            via: via.map(str::to_string),
            ..SessionInfo::default()
        })
    }

    fn statement(user: &str, at: i64) -> Event {
        let mut e = Event::new(Kind::Statement, "t");
        e.time_us = at;
        e.who = Some(who(user, 1, "analyst", None));
        e.decision = Some(Decision::Allowed);
        e.rows = Some(1);
        e
    }

    fn rules(yaml: &str) -> AlertRules {
        let r: AlertRules = serde_yaml::from_str(yaml).expect("rules");
        r.validate().expect("valid");
        r
    }

    fn run(a: &mut Alerter, events: &[Event]) -> Vec<Event> {
        let mut out = Vec::new();
        for e in events {
            a.observe(e, &mut out);
        }
        out
    }

    fn rule_names(alerts: &[Event]) -> Vec<&str> {
        alerts.iter().filter_map(|a| a.action.as_deref()).collect()
    }

    #[test]
    fn mass_rows_fire_above_the_limit_only() {
        let mut a = Alerter::new(rules("rows_per_statement: 100"), "t");
        let mut at_limit = statement("ann", T0);
        at_limit.rows = Some(100);
        let mut above = statement("ann", T0 + 1);
        above.rows = Some(101);
        let out = run(&mut a, &[at_limit, above]);
        assert_eq!(rule_names(&out), ["mass_rows"]);
        assert_eq!(out[0].kind, Kind::Alert);
        assert_eq!(out[0].user(), Some("ann"));
        assert_eq!(out[0].rows, Some(101));
        assert!(out[0].detail.as_deref().unwrap().contains("101 rows"));
    }

    #[test]
    fn statement_rate_fires_once_per_window_per_person() {
        let mut a = Alerter::new(rules("statements_per_minute: 3"), "t");
        let mut events: Vec<Event> = (0..10).map(|i| statement("ann", T0 + i)).collect();
        events.extend((0..3).map(|i| statement("bob", T0 + i)));
        // A new window for ann a minute later.
        events.extend((0..4).map(|i| statement("ann", T0 + MINUTE_US + i)));
        let out = run(&mut a, &events);
        assert_eq!(rule_names(&out), ["statement_rate", "statement_rate"]);
        assert!(out.iter().all(|e| e.user() == Some("ann")));
    }

    #[test]
    fn denied_bursts_count_within_the_window() {
        let mut a = Alerter::new(rules("denied: {count: 3, within: 10s}"), "t");
        let denied = |at: i64| {
            let mut e = statement("eve", at);
            e.decision = Some(Decision::Denied);
            e
        };
        let s = 1_000_000;
        // Spread out: never 3 within 10 s.
        let out = run(
            &mut a,
            &[denied(T0), denied(T0 + 8 * s), denied(T0 + 16 * s)],
        );
        assert!(out.is_empty(), "{out:?}");
        // A burst, then allowed statements do not count.
        let out = run(
            &mut a,
            &[
                denied(T0 + 30 * s),
                statement("eve", T0 + 31 * s),
                denied(T0 + 31 * s),
                denied(T0 + 32 * s),
            ],
        );
        assert_eq!(rule_names(&out), ["denied_burst"]);
    }

    #[test]
    fn outside_hours_once_per_session_and_only_for_listed_roles() {
        let hours = "hours: {from: \"07:00\", to: \"19:00\", days: [mon, tue, wed, thu, fri], roles: [analyst]}";
        let mut a = Alerter::new(rules(hours), "t");
        // T0 is Tuesday 22:13 UTC: outside.
        let out = run(&mut a, &[statement("ann", T0), statement("ann", T0 + 1)]);
        assert_eq!(rule_names(&out), ["outside_hours"]);
        // Tuesday 12:00 UTC: inside.
        let noon = T0 - (22 * 3600 + 13 * 60 + 20) * 1_000_000 + 12 * 3600 * 1_000_000;
        let mut other = statement("bob", noon);
        other.who = Some(who("bob", 2, "analyst", None));
        assert!(run(&mut a, &[other]).is_empty());
        // Saturday noon: outside; a role the rule does not list: no alert.
        let saturday = noon + 4 * 86_400 * 1_000_000;
        let mut dba = statement("cy", saturday);
        dba.who = Some(who("cy", 3, "dba", None));
        let mut analyst = statement("dee", saturday);
        analyst.who = Some(who("dee", 4, "analyst", None));
        let out = run(&mut a, &[dba, analyst]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].user(), Some("dee"));
    }

    #[test]
    fn night_shift_hours_wrap_midnight_and_honour_the_offset() {
        let r =
            rules("hours: {from: \"22:00\", to: \"06:00\", days: [tue], utc_offset: \"+01:00\"}");
        let hours = r.hours.clone().unwrap();
        // T0 = Tue 22:13 UTC = Tue 23:13 at +01:00: inside.
        assert!(hours.allows(T0));
        // Wed 04:00 local belongs to Tuesday's shift.
        assert!(hours.allows(T0 + 5 * 3600 * 1_000_000 - 13 * 60 * 1_000_000));
        // Wed 23:00 local: Wednesday is not listed.
        assert!(!hours.allows(T0 + 86_400 * 1_000_000));
        // Tue 12:00 local: outside the shift.
        assert!(!hours.allows(T0 - 11 * 3600 * 1_000_000));
    }

    #[test]
    fn break_glass_sessions_and_lockouts_alert_by_default() {
        let mut a = Alerter::new(AlertRules::default(), "t");
        let mut start = Event::new(Kind::SessionStart, "t");
        start.time_us = T0;
        start.who = Some(who("ann", 9, "dba", Some("break-glass:4")));
        let mut normal = start.clone();
        normal.who = Some(who("bob", 10, "dba", Some("grant:2")));
        let locked = |at: i64| {
            let mut e = Event::new(Kind::Login, "t");
            e.time_us = at;
            e.who = Some(who("eve", 0, "", None));
            e.outcome = Some("locked".into());
            e
        };
        let quiet = 15 * MINUTE_US;
        let out = run(
            &mut a,
            &[
                start,
                normal,
                locked(T0),
                locked(T0 + 1),
                locked(T0 + quiet),
            ],
        );
        assert_eq!(rule_names(&out), ["break_glass", "lockout", "lockout"]);
        assert_eq!(out[0].who.as_ref().unwrap().session, Some(9));
    }

    #[test]
    fn alerts_do_not_feed_the_rules() {
        let mut a = Alerter::new(rules("statements_per_minute: 1"), "t");
        let mut alert = statement("ann", T0);
        alert.kind = Kind::Alert;
        assert!(run(&mut a, &[alert.clone(), alert]).is_empty());
    }

    #[test]
    fn bad_rules_are_refused_with_a_reason() {
        for (yaml, want) in [
            ("rows_per_statement: 0", "at least 1"),
            ("denied: {count: 0, within: 1m}", "above zero"),
            ("hours: {from: \"25:00\", to: \"06:00\"}", "HH:MM"),
            ("hours: {from: \"07:00\", to: \"07:00\"}", "equal"),
            (
                "hours: {from: \"07:00\", to: \"19:00\", utc_offset: \"1\"}",
                "UTC offset",
            ),
            ("hours: {from: \"07:00\", to: \"19:00\", days: []}", "empty"),
            ("row_per_statement: 5", "unknown field"),
        ] {
            let err = match serde_yaml::from_str::<AlertRules>(yaml) {
                Ok(r) => r.validate().expect_err(yaml),
                Err(e) => e.to_string(),
            };
            assert!(err.contains(want), "{yaml}: {err}");
        }
    }
}
