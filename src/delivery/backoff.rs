//! The wait between failed calls to a peer: full jitter over a delay that
//! doubles from `retry_initial_ms` up to the cap `retry_max_ms`.

use rand::Rng;
use std::time::Duration;

#[derive(Debug)]
pub(super) struct Backoff {
    initial_ms: u64,
    max_ms: u64,
    current_ms: u64,
}

impl Backoff {
    pub(super) fn new(initial_ms: u64, max_ms: u64) -> Backoff {
        Backoff {
            initial_ms,
            max_ms,
            current_ms: initial_ms,
        }
    }

    /// The wait after one more failure: between half the current delay and
    /// the current delay, never more than the cap and never zero.
    pub(super) fn next(&mut self) -> Duration {
        let current = self.current_ms.min(self.max_ms);
        self.current_ms = current.saturating_mul(2).min(self.max_ms);
        let jittered = rand::thread_rng().gen_range(current / 2..=current);
        Duration::from_millis(jittered.max(1))
    }

    /// The peer answered (or announced itself): start again from the first
    /// delay.
    pub(super) fn reset(&mut self) {
        self.current_ms = self.initial_ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_and_start_again_after_a_reset() {
        let mut backoff = Backoff::new(200, 5_000);
        let waits: Vec<u64> = (0..12).map(|_| backoff.next().as_millis() as u64).collect();
        for (n, wait) in waits.iter().enumerate() {
            let ceiling = (200u64 << n).min(5_000);
            assert!(
                (ceiling / 2..=ceiling).contains(wait),
                "failure {n}: waited {wait} ms, expected {}..={ceiling}",
                ceiling / 2
            );
        }
        backoff.reset();
        assert!(backoff.next() <= Duration::from_millis(200));
    }

    #[test]
    fn a_wait_is_never_zero() {
        let mut backoff = Backoff::new(1, 1);
        assert!((0..100).all(|_| backoff.next() == Duration::from_millis(1)));
    }
}
