//! Quotas: requests per minute, tokens per day and month, and requests in flight, per user and
//! per API key. Every `/v1` request is admitted here before any work starts; the stricter of
//! the user's and the key's limits applies because both are checked and both are charged.
//!
//! The counters live in memory under one mutex (an admission is a few hash lookups), so fifty
//! parallel requests against a limit of ten admit exactly ten. A request reserves the tokens it
//! may generate (`max_tokens`, or `engine.default_max_tokens`); when it ends — also when the
//! client leaves — the reservation is released and the real count charged. The counters are
//! rebuilt from the usage tables at startup ([`Meter::restore`]), so a restart refills nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use maasbox_store::usage::{self, Counters, Spent};
use maasbox_types::{ErrorCode, Limits};
use parking_lot::Mutex;

use crate::error::ApiError;

/// Who a limit belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Subject {
    /// A user by id.
    User(i64),
    /// An API key by id.
    Key(String),
}

impl Subject {
    fn describe(&self) -> String {
        match self {
            Subject::User(_) => "your account".to_owned(),
            Subject::Key(id) => format!("API key {id}"),
        }
    }
}

#[derive(Default)]
struct Counter {
    /// Start times (ms) of requests admitted in the last minute.
    recent: VecDeque<i64>,
    day: String,
    day_tokens: u64,
    month: String,
    month_tokens: u64,
    /// Tokens reserved by requests still running.
    reserved: u64,
    in_flight: u64,
}

impl Counter {
    fn roll(&mut self, now_ms: i64, day: &str, month: &str) {
        while self.recent.front().is_some_and(|t| *t <= now_ms - 60_000) {
            self.recent.pop_front();
        }
        if self.day != day {
            self.day = day.to_owned();
            self.day_tokens = 0;
        }
        if self.month != month {
            self.month = month.to_owned();
            self.month_tokens = 0;
        }
    }

    fn idle(&self) -> bool {
        self.recent.is_empty() && self.reserved == 0 && self.in_flight == 0
    }
}

/// The quota counters of the whole server.
#[derive(Default)]
pub struct Meter {
    counters: Mutex<HashMap<Subject, Counter>>,
}

/// `Some(n)` with `n > 0` is a limit; `None` and `0` are none.
fn limit(v: Option<u64>) -> Option<u64> {
    v.filter(|n| *n > 0)
}

impl Meter {
    /// Rebuild the counters from the usage tables.
    pub fn restore(&self, c: Counters, now_ms: i64) {
        let (day, month) = (usage::day_of(now_ms), usage::month_of(now_ms));
        let mut g = self.counters.lock();
        g.clear();
        let mut put = |s: Subject, spent: &Spent| {
            let e = g.entry(s).or_default();
            e.roll(now_ms, &day, &month);
            e.day_tokens = spent.day;
            e.month_tokens = spent.month;
        };
        for (u, spent) in &c.users {
            put(Subject::User(*u), spent);
        }
        for (k, spent) in &c.keys {
            put(Subject::Key(k.clone()), spent);
        }
        for (u, k, ts) in c.recent {
            g.entry(Subject::User(u)).or_default().recent.push_back(ts);
            if let Some(k) = k {
                g.entry(Subject::Key(k)).or_default().recent.push_back(ts);
            }
        }
    }

    /// Admit a request for every `(subject, limits)` or refuse it, changing nothing. `reserve`
    /// is the most tokens it may generate; the permit's [`Permit::allowed_tokens`] may be less
    /// when a token quota has less room left.
    pub fn admit(
        self: &Arc<Self>,
        subjects: Vec<(Subject, Limits)>,
        reserve: u64,
        now_ms: i64,
    ) -> Result<Permit, ApiError> {
        let (day, month) = (usage::day_of(now_ms), usage::month_of(now_ms));
        let mut g = self.counters.lock();
        let mut allowed = reserve;
        for (s, l) in &subjects {
            let c = g.entry(s.clone()).or_default();
            c.roll(now_ms, &day, &month);
            if let Some(n) = limit(l.concurrent) {
                if c.in_flight >= n {
                    return Err(ApiError::new(
                        ErrorCode::RateLimited,
                        format!("{} has {} requests in flight; its limit is {n}", s.describe(), c.in_flight),
                    )
                    .retry_after(1));
                }
            }
            if let Some(n) = limit(l.requests_per_minute) {
                if c.recent.len() as u64 >= n {
                    let oldest = c.recent.front().copied().unwrap_or(now_ms);
                    let wait = ((oldest + 60_000 - now_ms) as u64).div_ceil(1000);
                    return Err(ApiError::new(
                        ErrorCode::RateLimited,
                        format!("rate limit reached: {n} requests per minute for {}; retry in {wait} s", s.describe()),
                    )
                    .retry_after(wait));
                }
            }
            for (n, used, what, wait) in [
                (limit(l.tokens_per_day), c.day_tokens + c.reserved, "tokens per day", usage::secs_to_next_day(now_ms)),
                (
                    limit(l.tokens_per_month),
                    c.month_tokens + c.reserved,
                    "tokens per month",
                    usage::secs_to_next_month(now_ms),
                ),
            ] {
                let Some(n) = n else { continue };
                if used >= n {
                    return Err(ApiError::new(
                        ErrorCode::InsufficientQuota,
                        format!(
                            "quota used up: {} has used its {n} {what} (requests still running hold some); \
                             it renews in {wait} s",
                            s.describe()
                        ),
                    )
                    .retry_after(wait));
                }
                allowed = allowed.min(n - used);
            }
        }
        for (s, _) in &subjects {
            let c = g.entry(s.clone()).or_default();
            c.in_flight += 1;
            c.recent.push_back(now_ms);
            c.reserved += allowed;
        }
        if g.len() > 100_000 {
            g.retain(|_, c| !c.idle() || c.day_tokens > 0 || c.month_tokens > 0);
        }
        drop(g);
        Ok(Permit {
            meter: self.clone(),
            subjects: subjects.into_iter().map(|(s, _)| s).collect(),
            reserved: allowed,
            done: false,
        })
    }

    /// Tokens used today and this month by `s` (for reports).
    pub fn spent(&self, s: &Subject, now_ms: i64) -> Spent {
        let (day, month) = (usage::day_of(now_ms), usage::month_of(now_ms));
        let mut g = self.counters.lock();
        match g.get_mut(s) {
            Some(c) => {
                c.roll(now_ms, &day, &month);
                Spent { day: c.day_tokens, month: c.month_tokens }
            }
            None => Spent::default(),
        }
    }
}

/// An admitted request: holds its concurrency slot and token reservation until settled or
/// dropped (a drop settles with zero tokens: the request did no work).
pub struct Permit {
    meter: Arc<Meter>,
    subjects: Vec<Subject>,
    reserved: u64,
    done: bool,
}

impl Permit {
    /// Tokens this request may generate within every token quota it is under.
    pub fn allowed_tokens(&self) -> u64 {
        self.reserved
    }

    /// Release the slot and reservation and charge `tokens` (prompt + completion).
    pub fn settle(mut self, tokens: u64, now_ms: i64) {
        self.release(tokens, now_ms);
    }

    fn release(&mut self, tokens: u64, now_ms: i64) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let (day, month) = (usage::day_of(now_ms), usage::month_of(now_ms));
        let mut g = self.meter.counters.lock();
        for s in &self.subjects {
            let c = g.entry(s.clone()).or_default();
            if tokens > 0 {
                // Charge the day and month the request ends in.
                c.roll(now_ms, &day, &month);
            }
            c.in_flight = c.in_flight.saturating_sub(1);
            c.reserved = c.reserved.saturating_sub(self.reserved);
            c.day_tokens += tokens;
            c.month_tokens += tokens;
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.release(0, maasbox_types::now_millis());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim(rpm: u64, tpd: u64, tpm: u64, conc: u64) -> Limits {
        Limits {
            requests_per_minute: Some(rpm),
            tokens_per_day: Some(tpd),
            tokens_per_month: Some(tpm),
            concurrent: Some(conc),
        }
    }

    const T0: i64 = 1_790_000_000_000;

    #[test]
    fn concurrency_slots_return_on_settle_and_drop() {
        let m = Arc::new(Meter::default());
        let s = || vec![(Subject::User(1), lim(0, 0, 0, 2))];
        let a = m.admit(s(), 10, T0).unwrap();
        let b = m.admit(s(), 10, T0).unwrap();
        let e = m.admit(s(), 10, T0).err().unwrap();
        assert_eq!(e.code, ErrorCode::RateLimited);
        a.settle(5, T0);
        let c = m.admit(s(), 10, T0).unwrap();
        drop(b);
        drop(c);
        assert_eq!(m.spent(&Subject::User(1), T0).day, 5);
        m.admit(s(), 10, T0).unwrap();
    }

    #[test]
    fn requests_per_minute_window_slides() {
        let m = Arc::new(Meter::default());
        let s = || vec![(Subject::Key("k".into()), lim(3, 0, 0, 0))];
        for i in 0..3 {
            m.admit(s(), 1, T0 + i * 1000).unwrap();
        }
        let e = m.admit(s(), 1, T0 + 10_000).err().unwrap();
        assert_eq!(e.code, ErrorCode::RateLimited);
        assert_eq!(e.retry_after, Some(50));
        m.admit(s(), 1, T0 + 60_001).unwrap();
    }

    #[test]
    fn token_quota_caps_reservations_and_charges_real_use() {
        let m = Arc::new(Meter::default());
        let user = (Subject::User(7), lim(0, 100, 1000, 0));
        let key = (Subject::Key("k".into()), lim(0, 0, 60, 0));
        // The key's month (60) is stricter than the user's day (100).
        let p = m.admit(vec![user.clone(), key.clone()], 256, T0).unwrap();
        assert_eq!(p.allowed_tokens(), 60);
        // While 60 are reserved the key has no room left.
        assert_eq!(m.admit(vec![user.clone(), key.clone()], 1, T0).err().unwrap().code, ErrorCode::InsufficientQuota);
        p.settle(20, T0);
        let p = m.admit(vec![user.clone(), key.clone()], 256, T0).unwrap();
        assert_eq!(p.allowed_tokens(), 40);
        p.settle(40, T0);
        let e = m.admit(vec![user.clone(), key], 1, T0).err().unwrap();
        assert_eq!(e.code, ErrorCode::InsufficientQuota);
        assert!(e.message.contains("API key k"), "{}", e.message);
        // The user alone still has 40 of 100 today; the next UTC day starts afresh.
        assert_eq!(m.admit(vec![user.clone()], 256, T0).unwrap().allowed_tokens(), 40);
        assert_eq!(m.admit(vec![user], 256, T0 + 86_400_000).unwrap().allowed_tokens(), 100);
    }

    #[test]
    fn a_refusal_changes_nothing() {
        let m = Arc::new(Meter::default());
        let user = (Subject::User(1), lim(0, 0, 0, 0));
        let key = (Subject::Key("k".into()), lim(0, 0, 0, 1));
        let _held = m.admit(vec![user.clone(), key.clone()], 0, T0).unwrap();
        m.admit(vec![user.clone(), key], 0, T0).err().unwrap();
        // The user's count was not raised by the refused request.
        let g = m.counters.lock();
        assert_eq!(g[&Subject::User(1)].in_flight, 1);
        assert_eq!(g[&Subject::User(1)].recent.len(), 1);
    }

    #[test]
    fn restore_brings_back_spent_tokens_and_the_last_minute() {
        let m = Arc::new(Meter::default());
        m.restore(
            Counters {
                users: vec![(1, Spent { day: 90, month: 500 })],
                keys: vec![],
                recent: vec![(1, None, T0 - 30_000), (1, None, T0 - 90_000)],
            },
            T0,
        );
        let e = m.admit(vec![(Subject::User(1), lim(0, 90, 0, 0))], 1, T0).err().unwrap();
        assert_eq!(e.code, ErrorCode::InsufficientQuota);
        let e = m.admit(vec![(Subject::User(1), lim(1, 0, 0, 0))], 1, T0).err().unwrap();
        assert_eq!(e.code, ErrorCode::RateLimited, "one request in the last minute survives the restart");
    }
}
