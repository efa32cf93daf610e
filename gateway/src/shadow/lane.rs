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
//! instead of queueing behind, or in front of, real requests. One caveat:
//! handing a job to the lane takes the lane runtime's queue lock for a moment;
//! if the lane is preempted holding it while more normal-priority threads
//! than CPUs are runnable, a proxy thread can wait for it. Keep
//! `server.threads` at or below the CPUs the gateway gets. Health checks and reloads stay on
//! the control plane at normal priority, so a busy shadow lane cannot delay
//! them either.

use std::sync::mpsc;

/// The nice value of the shadow lane's threads (19 = lowest priority).
pub const SHADOW_NICE: i32 = 19;

/// Start the lane's thread and return a handle to spawn shadows on. The
/// runtime lives as long as the process.
pub fn start() -> Result<tokio::runtime::Handle, super::StoreError> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("shadow".into())
        .spawn(move || {
            lower_priority_of_this_thread();
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(super::StoreError::Lane(format!("cannot start the shadow runtime: {e}"))));
                    return;
                }
            };
            let _ = tx.send(Ok(runtime.handle().clone()));
            // Drive spawned shadows forever; the process exit ends the thread.
            runtime.block_on(std::future::pending::<()>());
        })
        .map_err(|e| super::StoreError::Lane(format!("cannot spawn the shadow thread: {e}")))?;
    rx.recv().map_err(|_| super::StoreError::Lane("the shadow thread ended before its runtime started".into()))?
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
        let handle = start().expect("lane starts");
        let caller = std::thread::current().id();
        let (tx, rx) = mpsc::channel();
        handle.spawn(async move {
            let here = std::thread::current();
            let _ = tx.send((here.id(), here.name().map(String::from), nice_of_this_thread(), is_idle_policy()));
        });
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
