//! openloop: an open-loop (fixed-rate) HTTP/1.1 load generator, like wrk2.
//!
//! Request i of the run is due at start + i/R and goes to connection i % C.
//! Each connection sends its requests in order, one in flight at a time: it
//! waits for the due time (or sends at once when it is already late) and
//! counts the latency from the due time, not from the send. A server that
//! stalls therefore shows its stall in every request that should have gone out
//! meanwhile: no coordinated omission. One thread (tokio current_thread), so
//! `taskset` pins all of it, and a second one that wakes every 10 ms to read
//! the host's steal counter (`steal.rs`).
//!
//! stdout: one `BENCH_RESULT` line in the format of benches/load/bench.lua,
//! with the tails also over the requests clear of the host's CPU thefts
//! (`steal.rs`).

mod args;
mod http;
mod steal;
mod timer;

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::args::{Args, Parsed};
use crate::steal::StealWatch;
use crate::timer::Timer;

/// A request that goes out later than this after it could have is "late".
const LATE: Duration = Duration::from_millis(1);
const READ_CHUNK: usize = 16 * 1024;

#[derive(Default, Clone, Copy)]
struct Errors {
    connect: u64,
    read: u64,
    write: u64,
    timeout: u64,
    status: u64,
}

/// What one connection (or, merged, the whole run) saw.
#[derive(Default)]
struct Tally {
    /// Due time to end of the response, microseconds, one per response.
    latencies_us: Vec<u32>,
    /// The due time of each of those responses' requests, in the same order.
    dues: Vec<Instant>,
    errors: Errors,
    sent: u64,
    /// Sent > 1 ms after both the due time and the connection's previous
    /// exchange had passed: the generator itself fell behind.
    late_generator: u64,
    /// The connection was still busy with the previous exchange > 1 ms after
    /// the due time: the server's slowness (or too few connections).
    late_queued: u64,
    max_slip: Duration,
    coarse_timer: bool,
}

impl Tally {
    fn merge(&mut self, o: Tally) {
        self.latencies_us.extend_from_slice(&o.latencies_us);
        self.dues.extend_from_slice(&o.dues);
        let (e, f) = (&mut self.errors, o.errors);
        (e.connect, e.read, e.write) = (e.connect + f.connect, e.read + f.read, e.write + f.write);
        (e.timeout, e.status) = (e.timeout + f.timeout, e.status + f.status);
        self.sent += o.sent;
        self.late_generator += o.late_generator;
        self.late_queued += o.late_queued;
        self.max_slip = self.max_slip.max(o.max_slip);
        self.coarse_timer |= o.coarse_timer;
    }
}

struct Plan {
    args: Args,
    total: u64,
    start: Instant,
    /// End of the schedule plus the timeout: nothing runs past it.
    stop: Instant,
}

enum Failure {
    Write,
    Read,
}

/// xorshift64*: the user IDs only need to be spread, not unpredictable.
struct Rng(u64);

impl Rng {
    fn new(conn: u64) -> Rng {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let mut z = (now.as_nanos() as u64) ^ u64::from(std::process::id()).rotate_left(32);
        z = z.wrapping_add(conn.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        // splitmix64 finaliser, so neighbouring connections start far apart
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)).max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform enough in 2000..=users (users >= 2000, checked by args).
    fn user(&mut self, users: u64) -> u64 {
        2000 + self.next() % (users - 1999)
    }
}

/// Nearest-rank percentile of sorted values; 0 when there are none.
fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    // The shrink keeps 99.9% of 1000 at rank 999, not 1000 (99.9 is not exact in binary).
    let rank = (p / 100.0 * sorted.len() as f64 * (1.0 - 1e-12)).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Writes the request and reads one whole response: (status, must close).
async fn exchange(s: &mut TcpStream, req: &[u8], buf: &mut Vec<u8>) -> Result<(u16, bool), Failure> {
    s.write_all(req).await.map_err(|_| Failure::Write)?;
    buf.clear();
    loop {
        buf.reserve(READ_CHUNK);
        let n = s.read_buf(buf).await.map_err(|_| Failure::Read)?;
        match http::parse_response(buf, n == 0) {
            // Bytes after the response were never asked for: drop the connection.
            Ok(http::Parsed::Done { status, len, close }) => return Ok((status, close || len != buf.len())),
            Ok(http::Parsed::Partial) if n > 0 => {}
            // Closed before the end of the response, or not HTTP.
            _ => return Err(Failure::Read),
        }
    }
}

/// Connection `k`: requests k, k + C, k + 2C, ... of the schedule.
async fn connection(k: u64, plan: Arc<Plan>, mut stream: Option<TcpStream>) -> Tally {
    let a = &plan.args;
    let conns = a.connections as u64;
    let mut timer = Timer::new();
    let mut t = Tally {
        latencies_us: Vec::with_capacity(plan.total.div_ceil(conns) as usize),
        dues: Vec::with_capacity(plan.total.div_ceil(conns) as usize),
        coarse_timer: !timer.precise(),
        ..Tally::default()
    };
    let mut rng = Rng::new(k);
    let (mut req, mut buf) = (Vec::with_capacity(256), Vec::with_capacity(READ_CHUNK));
    let mut free_at = plan.start; // end of this connection's previous exchange
    let mut i = k;
    while i < plan.total {
        let due = plan.start + Duration::from_secs_f64(i as f64 / a.rate);
        timer.sleep_until(due).await;
        let now = Instant::now();
        if now >= plan.stop {
            // Cut off: each of these is already late by more than the timeout.
            t.errors.timeout += (plan.total - i).div_ceil(conns);
            break;
        }
        i += conns;
        if free_at > due + LATE {
            t.late_queued += 1;
        }
        let slip = now.saturating_duration_since(free_at.max(due));
        if slip > LATE {
            t.late_generator += 1;
        }
        t.max_slip = t.max_slip.max(slip);
        let limit = tokio::time::Instant::from_std((now + a.timeout).min(plan.stop));
        // At most one connect attempt per scheduled request: never a hot loop.
        let mut s = match stream.take() {
            Some(s) => s,
            None => match tokio::time::timeout_at(limit, connect(a.addr)).await {
                Ok(Ok(s)) => s,
                _ => {
                    t.errors.connect += 1;
                    free_at = Instant::now();
                    continue;
                }
            },
        };
        req.clear();
        let user = rng.user(a.users);
        let _ = write!(req, "GET {} HTTP/1.1\r\nHost: bench\r\nX-User-Id: {user}\r\n{}\r\n", a.path, a.headers);
        t.sent += 1;
        match tokio::time::timeout_at(limit, exchange(&mut s, &req, &mut buf)).await {
            Ok(Ok((status, close))) => {
                t.latencies_us.push(micros(due.elapsed()));
                t.dues.push(due);
                if status >= 400 {
                    t.errors.status += 1;
                }
                if !close {
                    stream = Some(s);
                }
            }
            Ok(Err(Failure::Write)) => t.errors.write += 1,
            Ok(Err(Failure::Read)) => t.errors.read += 1,
            Err(_) => t.errors.timeout += 1,
        }
        free_at = Instant::now();
    }
    t
}

async fn run(args: Args) -> (Tally, Duration, u64) {
    // Open the connections first, as wrk does, so that the first requests do
    // not pay for the handshake. One that fails is retried at its first request.
    let opening: Vec<_> =
        (0..args.connections).map(|_| tokio::spawn(tokio::time::timeout(args.timeout, connect(args.addr)))).collect();
    let mut streams = Vec::with_capacity(args.connections);
    for h in opening {
        streams.push(h.await.ok().and_then(Result::ok).and_then(Result::ok));
    }
    let failed = streams.iter().filter(|s| s.is_none()).count();
    if failed > 0 {
        eprintln!(
            "openloop: {failed} of {} connections did not open; retried at their first request",
            args.connections
        );
    }
    let total = args.total();
    let start = Instant::now();
    let stop = start + args.duration + args.timeout;
    let plan = Arc::new(Plan { args, total, start, stop });
    let tasks: Vec<_> = (0u64..).zip(streams).map(|(k, s)| tokio::spawn(connection(k, plan.clone(), s))).collect();
    let mut sum = Tally {
        latencies_us: Vec::with_capacity(total as usize),
        dues: Vec::with_capacity(total as usize),
        ..Tally::default()
    };
    for h in tasks {
        match h.await {
            Ok(t) => sum.merge(t),
            Err(e) => eprintln!("openloop: a connection task failed: {e}"),
        }
    }
    // Wall time: the schedule's span, or longer when the last answers came after it.
    (sum, start.elapsed().max(plan.args.duration), total)
}

fn main() {
    let args = match args::parse(std::env::args().skip(1)) {
        Ok(Parsed::Run(a)) => a,
        Ok(Parsed::Help) => {
            println!("{}", args::USAGE);
            return;
        }
        Err(e) => {
            eprintln!("openloop: {e}\n\n{}", args::USAGE);
            std::process::exit(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("openloop: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let rate = args.rate;
    let watch = StealWatch::start();
    let (mut sum, elapsed, total) = rt.block_on(run(args));
    let thefts = watch.map(StealWatch::finish);
    // Before the sort below, while each latency still sits beside its due time.
    let mut quiet: Option<Vec<u32>> = thefts.as_ref().map(|thefts| {
        let spans = sum.latencies_us.iter().zip(&sum.dues);
        spans.filter(|(_, &due)| steal::quiet(due, thefts)).map(|(&us, _)| us).collect()
    });
    let lat = &mut sum.latencies_us;
    lat.sort_unstable();
    let n = lat.len();
    let secs = elapsed.as_secs_f64();
    let rps = if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let p = |q: f64| percentile(lat, q);
    let e = sum.errors;
    let quiet_fields = match (&thefts, &mut quiet) {
        (Some(thefts), Some(quiet)) => {
            quiet.sort_unstable();
            format!(
                " thefts={} stolen_ms={} quiet_requests={} quiet_p50_us={} quiet_p99_us={} quiet_p999_us={} \
                 quiet_max_us={}",
                thefts.len(),
                thefts.iter().map(|t| t.ticks * 10).sum::<u64>(),
                quiet.len(),
                percentile(quiet, 50.0),
                percentile(quiet, 99.0),
                percentile(quiet, 99.9),
                quiet.last().copied().unwrap_or(0)
            )
        }
        _ => String::new(),
    };
    println!(
        "BENCH_RESULT requests={n} duration_us={} rps={rps:.1} p50_us={} p90_us={} p99_us={} p999_us={} max_us={} \
         err_connect={} err_read={} err_write={} err_timeout={} err_status={}{quiet_fields}",
        elapsed.as_micros(),
        p(50.0),
        p(90.0),
        p(99.0),
        p(99.9),
        lat.last().copied().unwrap_or(0),
        e.connect,
        e.read,
        e.write,
        e.timeout,
        e.status
    );
    let ms = |us: u32| f64::from(us) / 1000.0;
    eprintln!(
        "openloop: {n} responses in {secs:.3} s = {rps:.1} req/s achieved, target {rate:.1} req/s \
         ({total} scheduled, {} sent); latency from the due time: p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, \
         max {:.3} ms; sent > 1 ms late: {} by the generator itself (max slip {:.3} ms), {} queued behind a busy \
         connection; errors: connect {} read {} write {} timeout {} status {}",
        sum.sent,
        ms(p(50.0)),
        ms(p(99.0)),
        ms(p(99.9)),
        ms(lat.last().copied().unwrap_or(0)),
        sum.late_generator,
        sum.max_slip.as_secs_f64() * 1000.0,
        sum.late_queued,
        e.connect,
        e.read,
        e.write,
        e.timeout,
        e.status
    );
    if sum.late_generator * 100 > sum.sent.max(1) {
        eprintln!(
            "openloop: WARNING: {} of {} requests went out > 1 ms late because openloop itself fell behind: \
             the figures measure the generator, not the server (lower --rate, or give openloop more CPU)",
            sum.late_generator, sum.sent
        );
    }
    if sum.coarse_timer {
        eprintln!("openloop: note: no timerfd, tokio's 1 ms timer: latencies include up to ~1 ms of wake-up delay");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        assert_eq!(percentile(&[], 99.0), 0);
        assert_eq!(percentile(&[7], 50.0), 7);
        assert_eq!(percentile(&[7], 99.9), 7);
        let v: Vec<u32> = (1..=1000).collect();
        assert_eq!(percentile(&v, 50.0), 500);
        assert_eq!(percentile(&v, 90.0), 900);
        assert_eq!(percentile(&v, 99.0), 990);
        assert_eq!(percentile(&v, 99.9), 999);
        assert_eq!(percentile(&v, 100.0), 1000);
        assert_eq!(percentile(&v, 0.0), 1);
        let v = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
        assert_eq!(percentile(&v, 99.0), 10);
        assert_eq!(percentile(&v, 50.0), 5);
    }

    #[test]
    fn user_ids_in_range() {
        let mut r = Rng::new(3);
        let ids: Vec<u64> = (0..10_000).map(|_| r.user(2010)).collect();
        assert!(ids.iter().all(|&u| (2000..=2010).contains(&u)));
        assert!(ids.contains(&2000) && ids.contains(&2010));
        assert!((0..1000).map(|_| r.user(1_000_000)).any(|u| u > 500_000));
    }
}
