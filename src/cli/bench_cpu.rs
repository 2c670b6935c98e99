//! Where `cluebridge bench` spent its CPU: each process's user and system
//! time over the measured window (from `/proc/PID/stat`), as a share of
//! one core and per message. On a machine shared by the nodes and the
//! bench, the figures say which side runs out of CPU first.

use std::time::Instant;

/// Clock ticks per second of `/proc/PID/stat`'s times (`USER_HZ`, 100 on
/// every Linux configuration in use).
const TICKS_PER_S: f64 = 100.0;

/// One process's CPU time at the start of the window.
#[derive(Debug)]
pub(super) struct Sample {
    name: String,
    pid: u32,
    ticks: u64,
}

/// A process's share of the CPU over the window.
#[derive(Debug, serde::Serialize)]
pub struct CpuShare {
    /// The node's id, or `bench` for this process (which holds the nodes
    /// too with `--in-process`).
    pub process: String,
    /// Percent of one core.
    pub percent_of_core: f64,
    /// CPU microseconds per message of the window (accepted ones for the
    /// sending node and the bench, received ones for the receiving node).
    pub cpu_us_per_message: f64,
}

/// User plus system time of `pid` so far, in clock ticks.
fn ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may
    // hold spaces: state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Samples every process of `processes` (name and pid) now.
pub(super) fn start(processes: &[(String, u32)]) -> (Instant, Vec<Sample>) {
    let samples = processes
        .iter()
        .filter_map(|(name, pid)| {
            Some(Sample {
                name: name.clone(),
                pid: *pid,
                ticks: ticks(*pid)?,
            })
        })
        .collect();
    (Instant::now(), samples)
}

/// What one process used over the window.
#[derive(Debug)]
pub(super) struct Used {
    pub name: String,
    cpu_s: f64,
    window_s: f64,
}

impl Used {
    /// The share, with the process's time divided over `messages`.
    pub fn share(&self, messages: u64) -> CpuShare {
        CpuShare {
            process: self.name.clone(),
            percent_of_core: 100.0 * self.cpu_s / self.window_s.max(1e-9),
            cpu_us_per_message: self.cpu_s * 1e6 / messages.max(1) as f64,
        }
    }
}

/// What each process sampled at `start` used since.
pub(super) fn used(start: &(Instant, Vec<Sample>)) -> Vec<Used> {
    let window_s = start.0.elapsed().as_secs_f64();
    start
        .1
        .iter()
        .filter_map(|s| {
            Some(Used {
                name: s.name.clone(),
                cpu_s: ticks(s.pid)?.saturating_sub(s.ticks) as f64 / TICKS_PER_S,
                window_s,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process that spins is seen using the CPU it used, and its time
    /// per message is that time divided by the count.
    #[test]
    fn a_busy_process_is_seen_using_the_cpu_it_used() {
        let me = std::process::id();
        let start = start(&[("bench".to_string(), me)]);
        let first = start.1[0].ticks;
        // Spin until the kernel has counted at least 50 ms of CPU.
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        let mut x = 0u64;
        while ticks(me).expect("own stat") < first + 5 {
            assert!(Instant::now() < deadline, "no CPU time counted");
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        let used = used(&start);
        assert_eq!(used.len(), 1);
        let s = used[0].share(1000);
        assert_eq!(s.process, "bench");
        assert!(s.percent_of_core > 0.0, "{s:?}");
        // At least 50 ms over 1,000 messages.
        assert!(s.cpu_us_per_message >= 50.0, "{s:?}");
    }
}
