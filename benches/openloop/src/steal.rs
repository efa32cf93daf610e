//! When, during the run, the hypervisor took CPU time from this machine.
//!
//! Why: on a shared virtual machine the host now and then takes a CPU away
//! for 10 ms or more (`steal` in /proc/stat). Every request due or in flight
//! meanwhile waits for it, whichever proxy is measured, and at 15,000 req/s
//! one 20 ms theft makes 300 slow requests: enough to decide a p99.9 on its
//! own. A run-wide steal share cannot see that (a run at 0.2% can hold one
//! such theft). So a thread reads the machine's steal counter every 10 ms and
//! keeps the moments it grew; the report then gives the tails over every
//! request and, apart, over the quiet ones: those due at least [`GUARD`]
//! before or after every theft. By due time alone, not by when the answer
//! came: a filter that looked at the answer would leave out a slow request
//! more often than a fast one, and lower the very tails it compares.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the counter is read. /proc/stat counts in ticks of 10 ms.
const EVERY: Duration = Duration::from_millis(10);

/// How far from a theft a request must be due to count as quiet. Before it:
/// the request is still in flight when the theft comes, and the kernel adds
/// steal to the counter at its next tick, so the theft may have begun up to
/// a tick before the read that saw it. After it: the requests that queued
/// during the theft are still being answered.
pub const GUARD: Duration = Duration::from_millis(25);

/// Between two reads of the counter, `ticks` (of 10 ms) were stolen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Theft {
    pub from: Instant,
    pub to: Instant,
    pub ticks: u64,
}

pub struct StealWatch {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<Theft>>,
}

impl StealWatch {
    /// `None` where /proc/stat cannot be read (not Linux): no quiet figures.
    pub fn start() -> Option<StealWatch> {
        let first = steal_ticks()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("steal-watch".into())
            .spawn(move || {
                let (mut at, mut ticks, mut thefts) = (Instant::now(), first, Vec::new());
                while !stopped.load(Ordering::Relaxed) {
                    std::thread::sleep(EVERY);
                    let now = Instant::now();
                    let Some(read) = steal_ticks() else { break };
                    if read > ticks {
                        thefts.push(Theft { from: at, to: now, ticks: read - ticks });
                    }
                    (at, ticks) = (now, read);
                }
                thefts
            })
            .ok()?;
        Some(StealWatch { stop, thread })
    }

    pub fn finish(self) -> Vec<Theft> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// Whether a request due at `due` was due at least [`GUARD`] before or
/// after every theft.
pub fn quiet(due: Instant, thefts: &[Theft]) -> bool {
    thefts.iter().all(|t| due + GUARD <= t.from || t.to + GUARD <= due)
}

/// The machine's stolen ticks so far: the 8th value of /proc/stat's `cpu` line.
fn steal_ticks() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    stolen_of(text.lines().next()?)
}

fn stolen_of(cpu_line: &str) -> Option<u64> {
    let mut fields = cpu_line.split_ascii_whitespace();
    (fields.next()? == "cpu").then_some(())?;
    fields.nth(7)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_steal_field_of_the_cpu_line() {
        assert_eq!(stolen_of("cpu  4014747 7378 469595 6233656 16663 0 169912 498816 0 0"), Some(498816));
        assert_eq!(stolen_of("cpu0 1 2 3 4 5 6 7 8 9 10"), None, "one CPU's line is not the machine's");
        assert_eq!(stolen_of("cpu  1 2 3"), None, "a kernel without the field");
    }

    #[test]
    fn a_request_is_quiet_only_due_clear_of_every_theft_by_the_guard() {
        let zero = Instant::now();
        let at = |ms: u64| zero + Duration::from_millis(ms);
        let thefts =
            [Theft { from: at(1000), to: at(1010), ticks: 1 }, Theft { from: at(2000), to: at(2010), ticks: 2 }];
        assert!(quiet(at(970), &thefts), "due 30 ms before");
        assert!(!quiet(at(980), &thefts), "due 20 ms before");
        assert!(!quiet(at(1005), &thefts), "due during");
        assert!(!quiet(at(1030), &thefts), "due 20 ms after");
        assert!(quiet(at(1035), &thefts), "due 25 ms after");
        assert!(!quiet(at(2020), &thefts), "near the second theft");
        assert!(quiet(at(0), &[]), "no theft");
    }
}
