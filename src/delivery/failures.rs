//! How a background task reports a failure that repeats: the first at
//! once, then a reminder at most every [`REMINDER`] with how many came in
//! between, and one line when the task works again. A latched store
//! (which refuses every change until a restart) or a peer down for hours
//! then costs a few log lines, not one per attempt.

use crate::error::Error;
use std::time::{Duration, Instant};

/// The longest a task stays silent about a failure that goes on.
pub(super) const REMINDER: Duration = Duration::from_secs(60);

/// How long a task that writes to the store waits between attempts while
/// the store is latched: nothing it does can succeed before a restart.
pub(super) const LATCHED_WAIT: Duration = Duration::from_secs(5);

/// The failures of one background task (see the module).
#[derive(Debug)]
pub(super) struct Failures {
    task: &'static str,
    /// Logged as warnings (a peer that is down) rather than errors (a
    /// store that refuses changes).
    warn: bool,
    /// When the current run of failures began.
    since: Option<Instant>,
    last_logged: Option<Instant>,
    /// Failures since the last line logged.
    unlogged: u64,
}

impl Failures {
    /// Failures logged as errors.
    pub fn errors(task: &'static str) -> Failures {
        Failures {
            task,
            warn: false,
            since: None,
            last_logged: None,
            unlogged: 0,
        }
    }

    /// Failures logged as warnings.
    pub fn warnings(task: &'static str) -> Failures {
        Failures {
            warn: true,
            ..Failures::errors(task)
        }
    }

    /// Notes a failed attempt; logs it if it is the first of a run or a
    /// reminder is due.
    pub fn failed(&mut self, error: &Error) {
        self.failed_at(error, Instant::now());
    }

    fn failed_at(&mut self, error: &Error, now: Instant) -> bool {
        let since = *self.since.get_or_insert(now);
        let due = self
            .last_logged
            .is_none_or(|at| now.duration_since(at) >= REMINDER);
        if !due {
            self.unlogged += 1;
            return false;
        }
        let (task, failing_for_s, repeated) = (
            self.task,
            now.duration_since(since).as_secs(),
            self.unlogged + 1,
        );
        match (self.last_logged.is_none(), self.warn) {
            (true, false) => {
                tracing::error!(task, error = %error, "background task failed; retrying (reminders at most once a minute)")
            }
            (true, true) => {
                tracing::warn!(task, error = %error, "background task failed; retrying (reminders at most once a minute)")
            }
            (false, false) => {
                tracing::error!(task, error = %error, failing_for_s, repeated, "background task still failing")
            }
            (false, true) => {
                tracing::warn!(task, error = %error, failing_for_s, repeated, "background task still failing")
            }
        }
        self.last_logged = Some(now);
        self.unlogged = 0;
        true
    }

    /// Notes a successful attempt; logs the recovery after failures.
    pub fn succeeded(&mut self) {
        if let Some(since) = self.since.take() {
            tracing::info!(
                task = self.task,
                failed_for_s = since.elapsed().as_secs(),
                "background task works again"
            );
        }
        self.last_logged = None;
        self.unlogged = 0;
    }

    /// Whether the task is in a run of failures.
    pub fn failing(&self) -> bool {
        self.since.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failure that repeats every millisecond for three minutes is
    /// logged three times: at the start, then once a minute.
    #[test]
    fn a_repeating_failure_is_logged_once_then_once_a_minute() {
        let mut f = Failures::errors("sweeper");
        let error = Error::Unavailable("the store refuses changes".into());
        let start = Instant::now();
        let logged = (0..180_000u64)
            .filter(|ms| f.failed_at(&error, start + Duration::from_millis(*ms)))
            .count();
        assert_eq!(logged, 3);
        assert!(f.failing());
        f.succeeded();
        assert!(!f.failing());
        assert!(
            f.failed_at(&error, start + Duration::from_secs(181)),
            "a new run of failures is logged at once"
        );
    }
}
