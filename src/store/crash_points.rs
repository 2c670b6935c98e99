//! Named crash points, for tests only: places in the store's write path
//! where a test can make the process die on the spot (no unwinding, no
//! clean stop; what the process wrote stays in the page cache, as after
//! a SIGKILL).
//!
//! `CLUEBRIDGE_CRASH_AT=<point>:<n>` in a node's environment makes the
//! process call `std::process::abort()` at the n-th crossing of the named
//! point (the first crossing is number one). Tests use it to kill a real
//! node at every phase boundary of a state change and check that a
//! restart loses nothing that was answered. It is not an operators'
//! setting and is not shown in `--help`. The variable is read once, when
//! the first store opens; unset, a crossing costs one relaxed atomic load.

use crate::error::{Error, Result};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

/// The environment variable that arms a crash point.
pub const VARIABLE: &str = "CLUEBRIDGE_CRASH_AT";

/// A phase boundary of the store's write path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Point {
    /// A change is journaled (written, not synced), before its group's
    /// fsync.
    AfterAppend = 1,
    /// The group's fsync returned, before its changes are applied to the
    /// index.
    AfterSync,
    /// The group is applied to the index, before its callers are answered.
    AfterApply,
    /// A checkpoint flushed sled, before sled's files are fsynced and the
    /// journal position they reflect counts as durable.
    DuringCheckpoint,
    /// A rotation synced the old journal file, before the new one exists.
    DuringRotation,
    /// Part of a group's changes is applied to the index, not all.
    DuringIndexBatch,
    /// A snapshot of the live state is written, not yet synced or
    /// published.
    DuringSnapshot,
}

const POINTS: [(Point, &str); 7] = [
    (Point::AfterAppend, "after-append"),
    (Point::AfterSync, "after-sync"),
    (Point::AfterApply, "after-apply"),
    (Point::DuringCheckpoint, "during-checkpoint"),
    (Point::DuringRotation, "during-rotation"),
    (Point::DuringIndexBatch, "during-index-batch"),
    (Point::DuringSnapshot, "during-snapshot"),
];

/// The armed point (`Point as u8`), 0 when none is.
static ARMED: AtomicU8 = AtomicU8::new(0);
/// The crossing that aborts.
static AT: AtomicU64 = AtomicU64::new(0);
/// Crossings of the armed point so far.
static CROSSED: AtomicU64 = AtomicU64::new(0);
/// What the variable said, read once.
static PLAN: OnceLock<std::result::Result<Option<(Point, u64)>, String>> = OnceLock::new();

/// Reads the variable (once per process) and arms its point. A value that
/// does not parse is refused, so that a test's typo fails loudly instead
/// of running without its crash.
pub(crate) fn arm_from_env() -> Result<()> {
    let plan = PLAN.get_or_init(|| match std::env::var(VARIABLE) {
        Ok(value) => parse(&value).map(Some),
        Err(_) => Ok(None),
    });
    match plan {
        Ok(Some((point, n))) => {
            if ARMED.load(Ordering::Relaxed) == 0 {
                tracing::warn!(
                    point = name(*point),
                    crossing = n,
                    "crash point armed (tests only)"
                );
                AT.store(*n, Ordering::Relaxed);
                ARMED.store(*point as u8, Ordering::Release);
            }
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(e) => Err(Error::InvalidArgument(format!("{VARIABLE}: {e}"))),
    }
}

/// Marks a crossing of `point`: aborts the process if this is the armed
/// point's n-th crossing.
#[inline]
pub(crate) fn cross(point: Point) {
    if ARMED.load(Ordering::Relaxed) == point as u8 {
        crossed_armed();
    }
}

#[cold]
fn crossed_armed() {
    let n = CROSSED.fetch_add(1, Ordering::AcqRel) + 1;
    if n == AT.load(Ordering::Relaxed) {
        std::process::abort();
    }
}

fn name(point: Point) -> &'static str {
    POINTS
        .iter()
        .find(|(p, _)| *p == point)
        .map_or("?", |(_, n)| n)
}

/// `<point>:<n>`, with n at least 1.
fn parse(value: &str) -> std::result::Result<(Point, u64), String> {
    let known = || {
        POINTS
            .iter()
            .map(|(_, n)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (point, n) = value
        .split_once(':')
        .ok_or_else(|| format!("{value:?} is not <point>:<n> (points: {})", known()))?;
    let point = POINTS
        .iter()
        .find(|(_, name)| *name == point)
        .map(|(p, _)| *p)
        .ok_or_else(|| format!("unknown crash point {point:?} (points: {})", known()))?;
    match n.parse::<u64>() {
        Ok(n) if n >= 1 => Ok((point, n)),
        _ => Err(format!("{n:?} is not a crossing number (1 or more)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_point_parses_and_mistakes_are_named() {
        for (point, name) in POINTS {
            assert_eq!(parse(&format!("{name}:3")), Ok((point, 3)));
        }
        assert!(parse("after-append").unwrap_err().contains("<point>:<n>"));
        assert!(
            parse("after-fsync:1")
                .unwrap_err()
                .contains("unknown crash point")
        );
        assert!(
            parse("after-sync:0")
                .unwrap_err()
                .contains("crossing number")
        );
        assert!(
            parse("after-sync:x")
                .unwrap_err()
                .contains("crossing number")
        );
    }

    #[test]
    fn an_unarmed_point_is_inert() {
        // Nothing in the unit tests arms a point: crossings do nothing.
        for (point, _) in POINTS {
            cross(point);
        }
    }
}
