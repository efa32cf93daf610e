//! The shadow lane: one thread with its own tokio runtime, at the lowest CPU
//! priority, where every mirrored request, comparison and store write runs.
//!
//! Why a thread of its own and not the control plane's: a mirror must never
//! slow real traffic (nginx's `mirror` holds the main request until the
//! mirror subrequest is done; that is the complaint this fixes). The thread
//! runs under Linux's `SCHED_IDLE` policy: it gets a CPU only when no normal
//! thread wants it, and a proxy thread that wakes up preempts it at once.
//! A nice value alone is not enough: the scheduler lets a nice-19 thread
//! finish its time slice (milliseconds) before a waking proxy thread runs,
//! which measured as a 5x primary p99 at 5,000 req/s (benches/README.md).
//! Shadows that cannot keep up pile up to `max_in_flight` and the rest are
//! dropped and counted (`gateway_shadow_requests_total{outcome="dropped"}`),
//! instead of queueing behind, or in front of, real requests.
//!
//! Jobs reach the lane through a lock-free queue ([`Handoff`]) that the lane
//! polls, not through `Handle::spawn`: spawning from a proxy thread would
//! take the lane runtime's queue lock and wake it, and a proxy thread could
//! then wait on a lock held by a preempted lowest-priority thread. Health
//! checks and reloads stay on the control plane at normal priority, so a
//! busy shadow lane cannot delay them either.

use std::future::Future;
use std::pin::Pin;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use crossbeam_queue::ArrayQueue;

/// A shadow's whole work, ready to run on the lane.
pub type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Jobs waiting for the lane. Pushing never blocks and never wakes anything.
pub type Handoff = ArrayQueue<Job>;

/// Jobs that may wait at once; beyond it a shadow is dropped and counted
/// (each route's `max_in_flight` usually bounds them first).
pub const HANDOFF_CAPACITY: usize = 16_384;

/// How often the lane looks for jobs while they keep coming, and while idle.
const POLL_BUSY: Duration = Duration::from_millis(1);
const POLL_IDLE: Duration = Duration::from_millis(20);
/// Empty polls in a row before the lane slows down to `POLL_IDLE`.
const IDLE_AFTER: u32 = 50;

/// The nice value of the shadow lane's threads (19 = lowest priority).
pub const SHADOW_NICE: i32 = 19;

/// Start the lane's thread; it runs the jobs pushed into `handoff` for as
/// long as the process lives. Returns the lane runtime's handle (tests).
pub fn start(handoff: Arc<Handoff>) -> Result<tokio::runtime::Handle, String> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("shadow".into())
        .spawn(move || {
            lower_priority_of_this_thread();
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(format!("cannot start the shadow runtime: {e}")));
                    return;
                }
            };
            let _ = tx.send(Ok(runtime.handle().clone()));
            // Drive shadows forever; the process exit ends the thread.
            runtime.block_on(drain(handoff));
        })
        .map_err(|e| format!("cannot spawn the shadow thread: {e}"))?;
    rx.recv().map_err(|_| "the shadow thread ended before its runtime started".to_string())?
}

/// Move jobs from the hand-off queue onto this runtime. Spawning here, on the
/// lane's own thread, touches no lock a proxy thread uses.
async fn drain(handoff: Arc<Handoff>) {
    let mut empty_polls = 0u32;
    loop {
        let mut got = false;
        while let Some(job) = handoff.pop() {
            tokio::spawn(job);
            got = true;
        }
        empty_polls = if got { 0 } else { empty_polls.saturating_add(1) };
        tokio::time::sleep(if empty_polls > IDLE_AFTER { POLL_IDLE } else { POLL_BUSY }).await;
    }
}

/// Give the calling thread the lowest CPU priority: `SCHED_IDLE`, and nice
/// 19 should the policy be refused. Both are per thread on Linux, so the
/// proxy's threads are left alone; an unprivileged process may lower itself.
/// Failure (e.g. a seccomp profile) is logged, not fatal: shadows still run,
/// only without the guarantee.
pub fn lower_priority_of_this_thread() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid takes no arguments; setpriority and sched_setscheduler
        // only read their integer arguments and the param struct we own.
        let (nice, policy) = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::pid_t;
            let nice = libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, SHADOW_NICE);
            let param = libc::sched_param { sched_priority: 0 };
            (nice, libc::sched_setscheduler(tid, libc::SCHED_IDLE, &param))
        };
        if nice != 0 || policy != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "cannot lower the shadow thread's priority");
        }
    }
}

/// Whether the calling thread runs under `SCHED_IDLE` (tests).
pub fn is_idle_policy() -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: 0 means the calling thread; no pointers involved.
        unsafe { libc::sched_getscheduler(0) == libc::SCHED_IDLE }
    }
    #[cfg(not(target_os = "linux"))]
    false
}

/// The nice value of the calling thread (tests and `/api/status`).
pub fn nice_of_this_thread() -> Option<i32> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: as above; errno is cleared first because -1 is a valid result.
        unsafe {
            *libc::__errno_location() = 0;
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            let nice = libc::getpriority(libc::PRIO_PROCESS, tid);
            if nice == -1 && *libc::__errno_location() != 0 {
                return None;
            }
            Some(nice)
        }
    }
    #[cfg(not(target_os = "linux"))]
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadows_run_on_a_lowest_priority_thread_of_their_own() {
        let caller_nice = nice_of_this_thread();
        let handoff = Arc::new(Handoff::new(8));
        start(Arc::clone(&handoff)).expect("lane starts");
        let caller = std::thread::current().id();
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::pin(async move {
            let here = std::thread::current();
            let _ = tx.send((here.id(), here.name().map(String::from), nice_of_this_thread(), is_idle_policy()));
        });
        assert!(handoff.push(job).is_ok());
        let (thread, name, nice, idle) = rx.recv().expect("the task ran");
        assert_ne!(thread, caller);
        assert_eq!(name.as_deref(), Some("shadow"));
        assert_eq!(nice, Some(SHADOW_NICE));
        assert!(idle, "the lane runs under SCHED_IDLE");
        // The caller's own priority is untouched (nice is per thread on Linux).
        assert_eq!(nice_of_this_thread(), caller_nice);
        assert!(!is_idle_policy());
    }
}
