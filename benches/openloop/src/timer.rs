//! Sleep until an instant, to the microsecond.
//!
//! tokio's timer rounds every deadline up to the next millisecond tick, so a
//! request due at t would go out anywhere in [t, t + 1 ms): that delay would be
//! counted as latency, since latency runs from the due time. On Linux each
//! connection has a timerfd instead (an hrtimer, no timer slack), waited on
//! through the runtime's epoll; elsewhere, tokio's timer.

use std::io;
use std::time::Instant;

pub struct Timer {
    #[cfg(target_os = "linux")]
    fd: Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>,
}

impl Timer {
    /// Must run inside the runtime. Falls back to tokio's timer when a
    /// timerfd cannot be made.
    pub fn new() -> Self {
        #[cfg(target_os = "linux")]
        {
            use rustix::time::{timerfd_create, TimerfdClockId, TimerfdFlags};
            use tokio::io::{unix::AsyncFd, Interest};
            let flags = TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC;
            let fd = timerfd_create(TimerfdClockId::Monotonic, flags).ok().and_then(|fd| {
                // SAFETY: the OwnedFd is a valid, open descriptor that the AsyncFd owns
                // and drops last; as_raw_fd() on it always returns that same descriptor.
                unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.ok()
            });
            Timer { fd }
        }
        #[cfg(not(target_os = "linux"))]
        Timer {}
    }

    pub fn precise(&self) -> bool {
        #[cfg(target_os = "linux")]
        return self.fd.is_some();
        #[cfg(not(target_os = "linux"))]
        false
    }

    pub async fn sleep_until(&mut self, deadline: Instant) {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return;
        };
        #[cfg(target_os = "linux")]
        if let Some(fd) = &self.fd {
            if wait_timerfd(fd, left).await.is_ok() {
                return;
            }
        }
        tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await;
    }
}

#[cfg(target_os = "linux")]
async fn wait_timerfd(
    fd: &tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
    left: std::time::Duration,
) -> io::Result<()> {
    use rustix::time::{timerfd_settime, Itimerspec, TimerfdTimerFlags, Timespec};
    let zero = Timespec { tv_sec: 0, tv_nsec: 0 };
    let mut value = Timespec::try_from(left).map_err(|_| io::Error::other("sleep too long"))?;
    if value == zero {
        value.tv_nsec = 1; // zero would disarm the timer
    }
    let spec = Itimerspec { it_interval: zero, it_value: value };
    timerfd_settime(fd.get_ref(), TimerfdTimerFlags::empty(), &spec)?;
    loop {
        let mut guard = fd.readable().await?;
        let mut expirations = [0u8; 8];
        match guard.try_io(|fd| rustix::io::read(fd.get_ref(), &mut expirations).map_err(io::Error::from)) {
            Ok(result) => return result.map(drop),
            Err(_would_block) => continue,
        }
    }
}
