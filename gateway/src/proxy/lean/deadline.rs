//! A time limit on one wait of the lean path, whose timer lives inside the
//! request's future instead of on the heap.
//!
//! Why not `pingora_timeout::timeout`: it boxes its timer twice (the timer
//! future, then that box again) the first time the wait is pending, and
//! registers it in a shared `BTreeMap` under a lock; most requests have one
//! such wait (the upstream's answer), so that was 2.6 of the 16 heap
//! allocations a proxied request cost (`benches/README.md`, session 14).
//! Tokio's own timer is an intrusive entry in the runtime's wheel: no
//! allocation, and each of Pingora's no-steal threads has its own wheel.
//!
//! Like Pingora's, the timer is made only when the wait is first pending,
//! so a read that is ready at once costs no clock read and no timer, and
//! the limit counts from the first time the wait had to wait.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::task::Unconstrained;
use tokio::time::Sleep;

/// The wait took longer than its limit.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Elapsed;

pin_project! {
    /// `wait`, given at most `limit` from its first pending poll.
    pub(super) struct Within<F> {
        #[pin]
        wait: F,
        // Unconstrained, as tokio's own `Timeout` polls its timer: a wait
        // whose every poll spends the task's budget still meets its limit.
        #[pin]
        timer: Option<Unconstrained<Sleep>>,
        limit: Duration,
    }
}

/// `wait`, ended with `Elapsed` if it is still pending `limit` after it
/// first had to wait.
pub(super) fn within<F: Future>(limit: Duration, wait: F) -> Within<F> {
    Within { wait, timer: None, limit }
}

impl<F: Future> Future for Within<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut me = self.project();
        if let Poll::Ready(done) = me.wait.poll(cx) {
            return Poll::Ready(Ok(done));
        }
        if me.timer.is_none() {
            me.timer.set(Some(tokio::task::unconstrained(tokio::time::sleep(*me.limit))));
        }
        match me.timer.as_pin_mut().map(|timer| timer.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(Elapsed)),
            _ => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_ready_wait_is_returned_without_a_timer() {
        assert_eq!(within(Duration::from_millis(5), async { 7 }).await, Ok(7));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_past_its_limit_ends_with_elapsed() {
        let slow = tokio::time::sleep(Duration::from_secs(10));
        let started = tokio::time::Instant::now();
        assert_eq!(within(Duration::from_secs(2), slow).await, Err(Elapsed));
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_inside_its_limit_gives_its_output() {
        let quick = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            "answer"
        };
        assert_eq!(within(Duration::from_secs(2), quick).await, Ok("answer"));
    }
}
