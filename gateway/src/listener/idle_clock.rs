//! The keep-alive deadline and the shutdown watch of every connection that
//! waits for its next request, kept in one table per proxy thread instead of
//! a timer and a shutdown waiter inside each connection.
//!
//! Why: an idle keep-alive connection holds its task, and a task is as large
//! as its largest state. A timer (`pingora_timeout::sleep`, 136 bytes) and a
//! shutdown waiter (`watch::Receiver::changed`, 128 bytes) in the wait made
//! that state, and with it every idle connection, about 260 bytes larger
//! (`benches/README.md`, session 10). Here a waiting connection holds a
//! ticket (16 bytes) and the table an entry (24 bytes). nginx does the same
//! with one timer tree per worker.
//!
//! The price is precision: a sweeper wakes once per [`TICK`] and closes the
//! connections whose deadline has passed, so a keep-alive timeout of 60 s
//! ends between 60 and 61 s. That is why only the keep-alive wait uses it;
//! a new connection's first head has `server.header_timeout`, to the
//! millisecond, on a timer of its own (`head_wait::read_first_head`).

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use pingora_core::server::ShutdownWatch;
use slab::Slab;

/// How often the sweeper looks for connections whose deadline passed.
pub(super) const TICK: Duration = Duration::from_secs(1);

/// A table with room for more waiting connections than this is freed once
/// it is empty.
const SHRINK_ABOVE: usize = 1024;

/// One thread's waiting connections.
#[derive(Default)]
pub(super) struct IdleClock {
    table: Mutex<Table>,
    /// Set when the sweeper is gone (its runtime shut down): a later wait on
    /// this thread, on another runtime, needs a new clock.
    stopped: AtomicBool,
}

#[derive(Default)]
struct Table {
    waiting: Slab<Waiter>,
    /// Ticks the sweeper has counted: deadlines are in ticks.
    now: u32,
    /// Shutdown was signalled: every wait is over, and so is every new one.
    shut: bool,
}

struct Waiter {
    /// The tick at which the wait is over.
    deadline: u32,
    over: bool,
    /// The waiting connection's task, once it polled and found nothing.
    waker: Option<Waker>,
}

/// A connection's place in the clock while it waits: removed when dropped.
pub(super) struct IdleTicket {
    clock: Arc<IdleClock>,
    key: usize,
}

thread_local! {
    /// This thread's clock. The proxy threads each run a runtime of their
    /// own unless `server.work_stealing` is on; then a task may move to
    /// another thread, and its ticket still names the clock it entered.
    static THIS_THREAD: RefCell<Option<Arc<IdleClock>>> = const { RefCell::new(None) };
}

impl IdleClock {
    /// `use_clock` on this thread's clock (borrowed: a wait's ticket takes
    /// the one reference it needs). The first call on a thread starts its
    /// sweeper on the thread's runtime, watching `shutdown`: every service
    /// of one Pingora server gets the same shutdown channel.
    pub(super) fn with_this_thread<R>(shutdown: &ShutdownWatch, use_clock: impl FnOnce(&Arc<Self>) -> R) -> R {
        THIS_THREAD.with(|clock| {
            let mut clock = clock.borrow_mut();
            if let Some(clock) = clock.as_ref().filter(|c| !c.stopped.load(Ordering::Relaxed)) {
                return use_clock(clock);
            }
            let new = Arc::new(Self::default());
            tokio::spawn(sweep(Stopped(Arc::clone(&new)), shutdown.clone()));
            use_clock(clock.insert(new))
        })
    }

    /// A wait that is over after `idle` (rounded up to whole ticks, and at
    /// most one tick later for the tick in progress) or at shutdown.
    pub(super) fn enter(self: &Arc<Self>, idle: Duration) -> IdleTicket {
        let ticks = idle.as_millis().div_ceil(TICK.as_millis()).try_into().unwrap_or(u32::MAX);
        let mut table = self.lock();
        // One tick more: the tick in progress is partly gone already.
        let deadline = table.now.saturating_add(ticks).saturating_add(1);
        let key = table.waiting.insert(Waiter { deadline, over: false, waker: None });
        IdleTicket { clock: Arc::clone(self), key }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // A panic while the table was held cannot leave it inconsistent
        // (every change is one assignment), so a poisoned lock is taken as is.
        self.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Count a tick and end the waits whose deadline it reached.
    fn tick(&self) {
        let mut woken = Vec::new();
        {
            let mut table = self.lock();
            table.now = table.now.saturating_add(1);
            let now = table.now;
            for (_, waiter) in table.waiting.iter_mut().filter(|(_, w)| !w.over && w.deadline <= now) {
                waiter.over = true;
                woken.extend(waiter.waker.take());
            }
            // A burst of connections grew the table; once they are all gone,
            // its memory is, too, and the ticks stop walking empty slots.
            if table.waiting.is_empty() && table.waiting.capacity() > SHRINK_ABOVE {
                table.waiting = Slab::new();
            }
        }
        // Woken outside the lock: a waker may run its task on another thread.
        woken.into_iter().for_each(Waker::wake);
    }

    /// End every wait, now and from now on.
    fn shut(&self) {
        let woken: Vec<Waker> = {
            let mut table = self.lock();
            table.shut = true;
            table.waiting.iter_mut().filter_map(|(_, w)| w.waker.take()).collect()
        };
        woken.into_iter().for_each(Waker::wake);
    }
}

impl IdleTicket {
    /// Ready once the wait is over (its deadline passed, or shutdown);
    /// otherwise the task is woken when it is.
    pub(super) fn poll_over(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut table = self.clock.lock();
        let shut = table.shut;
        let Some(waiter) = table.waiting.get_mut(self.key) else { return Poll::Ready(()) };
        if shut || waiter.over {
            return Poll::Ready(());
        }
        match &mut waiter.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            waker => *waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for IdleTicket {
    fn drop(&mut self) {
        let waker = self.clock.lock().waiting.try_remove(self.key).and_then(|w| w.waker);
        // Dropped outside the lock.
        drop(waker);
    }
}

/// Tick the clock until shutdown, then end every wait. A watch whose
/// sender is gone never signals: the clock then ticks for good. The guard
/// is an argument, so that a sweeper dropped before its first poll still
/// ends its clock.
async fn sweep(stopped: Stopped, mut shutdown: ShutdownWatch) {
    let clock = &stopped.0;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + TICK, TICK);
    // A thread too busy to tick on time ticks late, not several times at
    // once, so no wait ends a tick early. (A tick less than 5 ms late keeps
    // tokio's schedule, so the next one comes that much sooner: a wait can
    // end up to 5 ms before its time.)
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watching = true;
    loop {
        if *shutdown.borrow() {
            clock.shut();
            return;
        }
        tokio::select! {
            _ = ticks.tick() => clock.tick(),
            changed = shutdown.changed(), if watching => watching = changed.is_ok(),
        }
    }
}

/// A sweeper dropped before shutdown (its runtime was dropped): its waits
/// end rather than never time out, and the thread's next wait gets a new
/// clock.
struct Stopped(Arc<IdleClock>);

impl Drop for Stopped {
    fn drop(&mut self) {
        if !self.0.lock().shut {
            self.0.stopped.store(true, Ordering::Relaxed);
            self.0.shut();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    /// Polls the ticket once: true when its wait is over.
    async fn over(ticket: &IdleTicket) -> bool {
        poll_fn(|cx| Poll::Ready(ticket.poll_over(cx).is_ready())).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_after_its_idle_time_rounded_up_to_a_tick_and_never_before() {
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let clock = Arc::new(IdleClock::default());
        tokio::spawn(sweep(Stopped(Arc::clone(&clock)), rx));
        // Half a tick in: the next tick comes after half the time of one.
        tokio::time::sleep(TICK / 2).await;
        let entered = tokio::time::Instant::now();
        let ticket = clock.enter(Duration::from_millis(1500));
        let woken = tokio::spawn({
            let clock = Arc::clone(&clock);
            async move {
                let ticket = clock.enter(Duration::from_secs(2));
                poll_fn(|cx| ticket.poll_over(cx)).await;
                tokio::time::Instant::now()
            }
        });
        tokio::time::sleep(Duration::from_millis(1900)).await;
        assert!(!over(&ticket).await, "1.5 s is 2 ticks: not over 1.9 s after it began");
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(over(&ticket).await, "over 2.6 s after it began (at most a tick late)");
        let after = woken.await.expect("task") - entered;
        assert!(
            after >= Duration::from_secs(2) && after <= Duration::from_secs(3),
            "a wait of 2 s woke its task after {after:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_every_wait_and_every_later_one() {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let clock = Arc::new(IdleClock::default());
        let sweeper = tokio::spawn(sweep(Stopped(Arc::clone(&clock)), rx));
        let waiting = tokio::spawn({
            let clock = Arc::clone(&clock);
            async move {
                let ticket = clock.enter(Duration::from_secs(60));
                poll_fn(|cx| ticket.poll_over(cx)).await
            }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        tx.send(true).expect("send");
        waiting.await.expect("the wait ended at shutdown");
        sweeper.await.expect("the sweeper ends");
        assert!(over(&clock.enter(Duration::from_secs(60))).await, "a wait that starts after shutdown is over");
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_ticket_leaves_the_table() {
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let clock = Arc::new(IdleClock::default());
        tokio::spawn(sweep(Stopped(Arc::clone(&clock)), rx));
        let tickets: Vec<_> = (0..3).map(|_| clock.enter(Duration::from_secs(60))).collect();
        assert_eq!(clock.lock().waiting.len(), 3);
        drop(tickets);
        assert_eq!(clock.lock().waiting.len(), 0);
    }

    #[test]
    fn a_clock_whose_runtime_is_gone_ends_its_waits_and_is_replaced() {
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let runtime = || tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
        // Dropped after its sweeper ran, and before it was ever polled.
        for sweeper_ran in [true, false] {
            let first = runtime();
            let (clock, ticket) = first.block_on(async {
                let clock = IdleClock::with_this_thread(&rx, Arc::clone);
                if sweeper_ran {
                    tokio::task::yield_now().await;
                }
                let ticket = clock.enter(Duration::from_secs(60));
                (clock, ticket)
            });
            let waker = Waker::noop().clone();
            assert!(ticket.poll_over(&mut Context::from_waker(&waker)).is_pending());
            drop(first);
            assert!(ticket.poll_over(&mut Context::from_waker(&waker)).is_ready(), "its sweeper is gone");
            let again = runtime().block_on(async { IdleClock::with_this_thread(&rx, Arc::clone) });
            assert!(!Arc::ptr_eq(&clock, &again), "a new clock, with a sweeper on the new runtime");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_table_grown_by_a_burst_is_freed_once_empty() {
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let clock = Arc::new(IdleClock::default());
        tokio::spawn(sweep(Stopped(Arc::clone(&clock)), rx));
        let burst: Vec<_> = (0..SHRINK_ABOVE * 2).map(|_| clock.enter(Duration::from_secs(60))).collect();
        drop(burst);
        let one = clock.enter(Duration::from_secs(60));
        tokio::time::sleep(TICK * 2).await;
        assert!(clock.lock().waiting.capacity() > SHRINK_ABOVE, "kept while a connection waits");
        drop(one);
        tokio::time::sleep(TICK * 2).await;
        assert_eq!(clock.lock().waiting.capacity(), 0);
    }
}
