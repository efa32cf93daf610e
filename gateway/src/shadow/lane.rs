//! The shadow lane: one thread with its own tokio runtime, at the lowest CPU
//! priority, where every mirrored request, comparison and store write runs.
//!
//! Why a thread of its own and not the control plane's: a mirror must never
//! slow real traffic (nginx's `mirror` holds the main request until the
//! mirror subrequest is done; that is the complaint this fixes). On a core
//! that is busy with client requests, the kernel gives a nice-19 thread about
//! 1.5% of the CPU, so the proxy threads always win. Shadows that cannot keep
//! up then pile up to `max_in_flight` and the rest are dropped and counted
//! (`gateway_shadow_dropped_total`), instead of queueing behind, or in front
//! of, real requests. Health checks and reloads stay on the control plane at
//! normal priority, so a busy shadow lane cannot delay them either.

use std::sync::mpsc;

/// The nice value of the shadow lane's threads (19 = lowest priority).
pub const SHADOW_NICE: i32 = 19;

/// Start the lane's thread and return a handle to spawn shadows on. The
/// runtime lives as long as the process.
pub fn start() -> Result<tokio::runtime::Handle, String> {
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
            // Drive spawned shadows forever; the process exit ends the thread.
            runtime.block_on(std::future::pending::<()>());
        })
        .map_err(|e| format!("cannot spawn the shadow thread: {e}"))?;
    rx.recv().map_err(|_| "the shadow thread ended before its runtime started".to_string())?
}

/// Give the calling thread the lowest CPU priority. On Linux the nice value
/// is per thread, so this leaves the proxy's threads alone. Failure (e.g. a
/// seccomp profile) is logged, not fatal: shadows still run, only without
/// the guarantee.
pub fn lower_priority_of_this_thread() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid takes no arguments; setpriority only reads its integer arguments.
        let rc = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, SHADOW_NICE)
        };
        if rc != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "cannot lower the shadow thread's priority");
        }
    }
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
            let _ = tx.send((
                std::thread::current().id(),
                std::thread::current().name().map(String::from),
                nice_of_this_thread(),
            ));
        });
        let (thread, name, nice) = rx.recv().expect("the task ran");
        assert_ne!(thread, caller);
        assert_eq!(name.as_deref(), Some("shadow"));
        assert_eq!(nice, Some(SHADOW_NICE));
        // The caller's own priority is untouched (nice is per thread on Linux).
        assert_eq!(nice_of_this_thread(), caller_nice);
    }
}
