//! Blacklist data layer: per-request lookup cost at 1k / 100k / 1M entries
//! (IPv4 and IPv6), and the reload-thread costs of a 1M-entry list: parsing
//! the file, building the set, building the static list.
//!
//! Run: `cargo bench -p gateway --bench blacklist` (add `-- --quick` for a short run).

use std::hint::black_box;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use gateway::edge::blacklist::{parse_list_file, StaticBlacklist};
use gateway::edge::ipset::IpSet;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

const SIZES: [usize; 3] = [1_000, 100_000, 1_000_000];
/// Probe addresses cycled through by the lookup benches; a power of two.
const PROBES: usize = 4096;

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Random /24../32 anywhere in IPv4.
fn v4_nets(rng: &mut XorShift, n: usize) -> Vec<IpNet> {
    (0..n)
        .map(|_| {
            let len = 24 + rng.below(9) as u8;
            IpNet::V4(Ipv4Net::new(Ipv4Addr::from(rng.next() as u32), len).expect("len <= 32").trunc())
        })
        .collect()
}

/// Random /48../128 inside 2000::/3, where routed IPv6 lives.
fn v6_nets(rng: &mut XorShift, n: usize) -> Vec<IpNet> {
    (0..n)
        .map(|_| {
            let bits = (u128::from(rng.next()) << 64 | u128::from(rng.next())) >> 3 | 1 << 125;
            let len = 48 + rng.below(81) as u8;
            IpNet::V6(Ipv6Net::new(Ipv6Addr::from(bits), len).expect("len <= 128").trunc())
        })
        .collect()
}

/// Half addresses inside random entries, half random addresses (nearly all misses).
fn probes(rng: &mut XorShift, nets: &[IpNet]) -> Vec<IpAddr> {
    (0..PROBES)
        .map(|i| {
            let net = nets[rng.below(nets.len() as u64) as usize];
            match (net, i % 2 == 0) {
                (IpNet::V4(n), true) => {
                    let host = rng.next() as u32 & !u32::from(n.netmask());
                    IpAddr::V4(Ipv4Addr::from(u32::from(n.network()) | host))
                }
                (IpNet::V6(n), true) => {
                    let host = (u128::from(rng.next()) << 64 | u128::from(rng.next())) & !u128::from(n.netmask());
                    IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) | host))
                }
                (IpNet::V4(_), false) => IpAddr::V4(Ipv4Addr::from(rng.next() as u32)),
                (IpNet::V6(_), false) => {
                    IpAddr::V6(Ipv6Addr::from((u128::from(rng.next()) << 64 | u128::from(rng.next())) >> 3 | 1 << 125))
                }
            }
        })
        .collect()
}

fn lookups(c: &mut Criterion) {
    let mut group = c.benchmark_group("lookup");
    for (family, gen) in [("v4", v4_nets as fn(&mut XorShift, usize) -> Vec<IpNet>), ("v6", v6_nets)] {
        for size in SIZES {
            let mut rng = XorShift(0x2545_F491_4F6C_DD1D ^ size as u64);
            let nets = gen(&mut rng, size);
            let probes = probes(&mut rng, &nets);
            let set = IpSet::build(nets.into_iter().map(|n| (n, ())));
            let mut i = 0;
            group.bench_function(BenchmarkId::new(family, size), |b| {
                b.iter(|| {
                    i = (i + 1) & (PROBES - 1);
                    set.lookup(black_box(probes[i])).is_some()
                })
            });
        }
    }
    group.finish();
}

fn million_entry_list() -> Vec<IpNet> {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut nets = v4_nets(&mut rng, 900_000);
    nets.extend(v6_nets(&mut rng, 100_000));
    nets
}

fn reload_costs(c: &mut Criterion) {
    let nets = million_entry_list();
    let mut group = c.benchmark_group("reload_1m");
    group.sample_size(10);
    group.bench_function("ipset_build", |b| {
        b.iter_batched(
            || nets.iter().enumerate().map(|(i, n)| (*n, i)).collect::<Vec<_>>(),
            IpSet::build,
            BatchSize::PerIteration,
        )
    });

    let path = write_list_file(&nets);
    group.bench_function("parse_list_file", |b| {
        b.iter(|| parse_list_file(&path, "blacklist.files[0]").map(|v| v.len()).unwrap_or(0))
    });
    group.bench_function("static_blacklist_build", |b| {
        b.iter_batched(
            || parse_list_file(&path, "blacklist.files[0]").unwrap_or_default(),
            StaticBlacklist::build,
            BatchSize::PerIteration,
        )
    });
    group.finish();
    let _ = std::fs::remove_file(&path);
}

/// A list file as ops would write it: mostly bare entries, some with reasons, a few comments.
fn write_list_file(nets: &[IpNet]) -> PathBuf {
    let path = std::env::temp_dir().join(format!("gw-bench-blacklist-{}.txt", std::process::id()));
    let file = std::fs::File::create(&path).expect("create temp list file");
    let mut out = std::io::BufWriter::new(file);
    for (i, net) in nets.iter().enumerate() {
        let written = match i % 10 {
            0 => writeln!(out, "{net}  card testing 2026-11-11"),
            1 => writeln!(out, "{net} # ticket {i}"),
            _ => writeln!(out, "{net}"),
        };
        written.expect("write temp list file");
    }
    out.flush().expect("flush temp list file");
    path
}

criterion_group!(benches, lookups, reload_costs);
criterion_main!(benches);
