//! An immutable longest-prefix-match set of IPv4 and IPv6 CIDRs.
//!
//! Built once, off the request path (config load, list reload, admin change),
//! then looked up on every request. The CIDRs are flattened into sorted,
//! disjoint address ranges, each naming the most specific entry that covers
//! it, so a lookup is one binary search whatever the nesting. A table on the
//! top 16 bits of the address narrows that search to the ranges sharing them,
//! which keeps a 1M-entry lookup to a handful of cache lines.
//!
//! IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, what a dual-stack listener
//! reports for IPv4 clients) are looked up as IPv4, and entries written in
//! that form are stored as IPv4, so both spellings block the same client.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Marks an entry with no enclosing entry in `IpSet::parents`.
const NO_PARENT: u32 = u32::MAX;

/// Longest-prefix-match set over CIDRs, each carrying a value.
pub struct IpSet<V> {
    v4: Ranges<u32>,
    v6: Ranges<u128>,
    /// Every value given to `build`, in order; ranges refer to them by index.
    values: Vec<V>,
    /// For each value, the index of the nearest entry that strictly contains its CIDR.
    parents: Vec<u32>,
}

impl<V> IpSet<V> {
    /// Build the set; runs at load time. For overlapping CIDRs the most
    /// specific wins for the addresses inside it; for identical CIDRs the
    /// last one given wins.
    pub fn build(entries: impl IntoIterator<Item = (IpNet, V)>) -> IpSet<V> {
        let mut values = Vec::new();
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for (net, value) in entries {
            let idx = u32::try_from(values.len()).ok().filter(|i| *i != NO_PARENT);
            // Four billion entries would need hundreds of GiB; the list loader never gets there.
            let idx = idx.expect("an IpSet holds fewer than 2^32 - 1 entries");
            values.push(value);
            match as_v4(net) {
                Ok(n) => v4.push(Span { start: u32::from(n.network()), end: u32::from(n.broadcast()), idx }),
                Err(n) => v6.push(Span { start: u128::from(n.network()), end: u128::from(n.broadcast()), idx }),
            }
        }
        let mut parents = vec![NO_PARENT; values.len()];
        let v4 = Ranges::sweep(v4, &mut parents);
        let v6 = Ranges::sweep(v6, &mut parents);
        IpSet { v4, v6, values, parents }
    }

    /// The value of the most specific CIDR containing `ip`; runs per request.
    pub fn lookup(&self, ip: IpAddr) -> Option<&V> {
        self.find(ip).map(|i| &self.values[i as usize])
    }

    /// Every entry containing `ip`, most specific first; identical CIDRs
    /// count once (the last given). For callers that may skip an entry, e.g.
    /// one whose TTL has passed, and must then fall back to the broader block.
    pub fn matches(&self, ip: IpAddr) -> impl Iterator<Item = &V> + '_ {
        let mut next = self.find(ip);
        std::iter::from_fn(move || {
            let i = next?;
            let parent = self.parents[i as usize];
            next = (parent != NO_PARENT).then_some(parent);
            Some(&self.values[i as usize])
        })
    }

    /// Number of entries given to `build`, duplicates included.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    fn find(&self, ip: IpAddr) -> Option<u32> {
        match ip {
            IpAddr::V4(a) => self.v4.find(u32::from(a)),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(a) => self.v4.find(u32::from(a)),
                None => self.v6.find(u128::from(a)),
            },
        }
    }
}

impl<V> Default for IpSet<V> {
    fn default() -> Self {
        IpSet::build(std::iter::empty())
    }
}

impl<V> std::fmt::Debug for IpSet<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpSet").field("entries", &self.values.len()).finish_non_exhaustive()
    }
}

/// An IPv4 net, or an IPv6 one that is not inside `::ffff:0:0/96`.
fn as_v4(net: IpNet) -> Result<Ipv4Net, Ipv6Net> {
    match net {
        IpNet::V4(n) => Ok(n),
        IpNet::V6(n) => match (n.network().to_ipv4_mapped(), n.prefix_len().checked_sub(96)) {
            (Some(a), Some(len)) => Ipv4Net::new(a, len).map_err(|_| n),
            // `::ffff:0:0/90` and wider also cover non-mapped addresses: keep as IPv6.
            _ => Err(n),
        },
    }
}

/// An address key: `u32` for IPv4, `u128` for IPv6.
trait Key: Copy + Ord {
    /// The next address, `None` past the last one.
    fn succ(self) -> Option<Self>;
    /// The previous address; only called on addresses above zero.
    fn pred(self) -> Self;
    /// The top 16 bits, used to index the bucket table.
    fn bucket(self) -> usize;
}

impl Key for u32 {
    fn succ(self) -> Option<Self> {
        self.checked_add(1)
    }
    fn pred(self) -> Self {
        self.saturating_sub(1)
    }
    fn bucket(self) -> usize {
        (self >> 16) as usize
    }
}

impl Key for u128 {
    fn succ(self) -> Option<Self> {
        self.checked_add(1)
    }
    fn pred(self) -> Self {
        self.saturating_sub(1)
    }
    fn bucket(self) -> usize {
        (self >> 112) as usize
    }
}

const BUCKETS: usize = 1 << 16;

/// One entry's addresses, `start..=end`, and its value index.
#[derive(Clone, Copy)]
struct Span<K> {
    start: K,
    end: K,
    idx: u32,
}

/// Sorted, disjoint ranges; structure of arrays so the search touches only `starts`.
struct Ranges<K> {
    starts: Vec<K>,
    ends: Vec<K>,
    idx: Vec<u32>,
    /// `first[b]` = number of ranges whose start's top 16 bits are below `b`.
    first: Vec<u32>,
}

impl<K: Key> Ranges<K> {
    /// Flatten nested CIDRs into disjoint ranges, recording each entry's parent.
    ///
    /// CIDRs are either disjoint or nested, never partly overlapping, so after
    /// sorting by start (wider first) a stack of open entries is enough: a
    /// child splits its parent into the part before it and the part after.
    fn sweep(mut spans: Vec<Span<K>>, parents: &mut [u32]) -> Ranges<K> {
        spans.sort_unstable_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)).then(a.idx.cmp(&b.idx)));
        // Identical CIDRs: the last given (highest index, sorted last) wins.
        spans.dedup_by(|later, earlier| {
            let same = later.start == earlier.start && later.end == earlier.end;
            if same {
                earlier.idx = later.idx;
            }
            same
        });
        let mut out = Ranges { starts: Vec::new(), ends: Vec::new(), idx: Vec::new(), first: Vec::new() };
        out.starts.reserve(spans.len() * 2);
        let mut open: Vec<Span<K>> = Vec::new();
        // First address not yet emitted; `None` once past the last address.
        let mut cursor: Option<K> = None;
        for span in spans {
            while let Some(top) = open.last().copied().filter(|t| t.end < span.start) {
                out.emit(cursor, top.end, top.idx);
                // top.end < span.start, so this cannot overflow.
                cursor = top.end.succ();
                open.pop();
            }
            if let Some(top) = open.last().copied() {
                parents[span.idx as usize] = top.idx;
                // The parent's addresses between the last emitted range and this child.
                if cursor.is_some_and(|c| c < span.start) {
                    out.emit(cursor, span.start.pred(), top.idx);
                }
            }
            cursor = Some(span.start);
            open.push(span);
        }
        while let Some(top) = open.pop() {
            out.emit(cursor, top.end, top.idx);
            cursor = top.end.succ();
        }
        out.index();
        out
    }

    /// Append `cursor..=end` unless it is empty.
    fn emit(&mut self, cursor: Option<K>, end: K, idx: u32) {
        if let Some(start) = cursor.filter(|c| *c <= end) {
            self.starts.push(start);
            self.ends.push(end);
            self.idx.push(idx);
        }
    }

    fn index(&mut self) {
        self.starts.shrink_to_fit();
        self.ends.shrink_to_fit();
        self.idx.shrink_to_fit();
        let mut first = vec![0u32; BUCKETS + 1];
        for s in &self.starts {
            first[s.bucket() + 1] += 1;
        }
        for b in 1..first.len() {
            first[b] += first[b - 1];
        }
        self.first = first;
    }

    fn find(&self, key: K) -> Option<u32> {
        if self.starts.is_empty() {
            return None;
        }
        let b = key.bucket();
        let (lo, hi) = (self.first[b] as usize, self.first[b + 1] as usize);
        // Every range before `lo` starts at or below `key`, every one from `hi` above it.
        let i = lo + self.starts[lo..hi].partition_point(|s| *s <= key);
        let i = i.checked_sub(1)?;
        (key <= self.ends[i]).then(|| self.idx[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn set(entries: &[(&str, &'static str)]) -> IpSet<&'static str> {
        IpSet::build(entries.iter().map(|(n, v)| (n.parse().expect("net"), *v)))
    }

    #[test]
    fn empty_set_matches_nothing() {
        let s: IpSet<()> = IpSet::build([]);
        assert!(s.is_empty());
        assert_eq!(s.len(), 0);
        assert_eq!(s.lookup(ip("0.0.0.0")), None);
        assert_eq!(s.lookup(ip("::")), None);
    }

    #[test]
    fn most_specific_cidr_wins_inside_it_and_parent_covers_the_rest() {
        let s = set(&[("10.1.2.3/32", "host"), ("10.0.0.0/8", "wide"), ("10.1.0.0/16", "mid")]);
        assert_eq!(s.len(), 3);
        for (addr, want) in [
            ("10.1.2.3", Some("host")),
            ("10.1.2.2", Some("mid")),
            ("10.1.2.4", Some("mid")),
            ("10.1.0.0", Some("mid")),
            ("10.1.255.255", Some("mid")),
            ("10.0.255.255", Some("wide")),
            ("10.2.0.0", Some("wide")),
            ("10.0.0.0", Some("wide")),
            ("10.255.255.255", Some("wide")),
            ("9.255.255.255", None),
            ("11.0.0.0", None),
        ] {
            assert_eq!(s.lookup(ip(addr)).copied(), want, "{addr}");
        }
    }

    #[test]
    fn identical_cidrs_last_one_wins() {
        let s = set(&[("192.0.2.0/24", "first"), ("192.0.2.0/24", "second")]);
        assert_eq!(s.lookup(ip("192.0.2.77")), Some(&"second"));
        assert_eq!(s.len(), 2);
        assert_eq!(s.matches(ip("192.0.2.77")).count(), 1);
    }

    #[test]
    fn families_do_not_leak_into_each_other() {
        let s = set(&[("::/0", "all-v6"), ("2001:db8::/32", "doc"), ("2001:db8:1::/48", "site")]);
        assert_eq!(s.lookup(ip("192.0.2.1")), None);
        assert_eq!(s.lookup(ip("2001:db8:1::5")), Some(&"site"));
        assert_eq!(s.lookup(ip("2001:db8:2::5")), Some(&"doc"));
        assert_eq!(s.lookup(ip("2001:db9::")), Some(&"all-v6"));
        let s = set(&[("0.0.0.0/0", "all-v4")]);
        assert_eq!(s.lookup(ip("2001:db8::1")), None);
    }

    #[test]
    fn mapped_addresses_are_ipv4_both_ways() {
        let s = set(&[("192.0.2.0/24", "v4 entry"), ("::ffff:198.51.100.0/120", "mapped entry")]);
        assert_eq!(s.lookup(ip("::ffff:192.0.2.1")), Some(&"v4 entry"));
        assert_eq!(s.lookup(ip("198.51.100.9")), Some(&"mapped entry"));
        assert_eq!(s.lookup(ip("::ffff:198.51.100.9")), Some(&"mapped entry"));
        assert_eq!(s.lookup(ip("::ffff:203.0.113.1")), None);
    }

    #[test]
    fn first_and_last_addresses_of_the_space() {
        let s = set(&[("0.0.0.0/0", "all"), ("0.0.0.0/32", "zero"), ("255.255.255.255/32", "bcast")]);
        assert_eq!(s.lookup(ip("0.0.0.0")), Some(&"zero"));
        assert_eq!(s.lookup(ip("0.0.0.1")), Some(&"all"));
        assert_eq!(s.lookup(ip("255.255.255.254")), Some(&"all"));
        assert_eq!(s.lookup(ip("255.255.255.255")), Some(&"bcast"));
        let s = set(&[("::/0", "all"), ("::/128", "zero"), ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128", "max")]);
        assert_eq!(s.lookup(ip("::")), Some(&"zero"));
        assert_eq!(s.lookup(ip("::1")), Some(&"all"));
        assert_eq!(s.lookup(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe")), Some(&"all"));
        assert_eq!(s.lookup(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")), Some(&"max"));
    }

    #[test]
    fn matches_walk_from_most_to_least_specific() {
        let s = set(&[("10.0.0.0/8", "wide"), ("10.1.2.0/24", "narrow"), ("10.1.0.0/16", "mid")]);
        let all: Vec<_> = s.matches(ip("10.1.2.3")).copied().collect();
        assert_eq!(all, ["narrow", "mid", "wide"]);
        assert_eq!(s.matches(ip("10.9.0.0")).copied().collect::<Vec<_>>(), ["wide"]);
        assert_eq!(s.matches(ip("11.0.0.0")).count(), 0);
    }

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

    /// Nets crowded into a small space (10.0.0.0/12, 2001:db8::/40) so that nesting and duplicates are common.
    fn random_nets(rng: &mut XorShift, n: usize) -> Vec<IpNet> {
        (0..n)
            .map(|_| {
                if rng.below(2) == 0 {
                    let addr = Ipv4Addr::from(0x0A00_0000 | (rng.next() as u32 & 0x000F_FFFF));
                    IpNet::V4(Ipv4Net::new(addr, 12 + rng.below(21) as u8).expect("len").trunc())
                } else {
                    let low = (u128::from(rng.next()) << 64 | u128::from(rng.next())) >> 40;
                    let addr = std::net::Ipv6Addr::from(0x2001_0db8_u128 << 96 | low);
                    IpNet::V6(Ipv6Net::new(addr, 40 + rng.below(89) as u8).expect("len").trunc())
                }
            })
            .collect()
    }

    /// All entries containing `ip`, most specific first, the last of identical CIDRs only.
    fn naive(nets: &[IpNet], ip: IpAddr) -> Vec<usize> {
        let mut hits: Vec<usize> = (0..nets.len()).filter(|i| nets[*i].contains(&ip)).collect();
        hits.sort_by_key(|i| (std::cmp::Reverse(nets[*i].prefix_len()), std::cmp::Reverse(*i)));
        hits.dedup_by_key(|i| nets[*i]);
        hits
    }

    #[test]
    fn agrees_with_a_naive_scan_on_random_nets() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let nets = random_nets(&mut rng, 3000);
        let s = IpSet::build(nets.iter().copied().enumerate().map(|(i, n)| (n, i)));
        let mut probes: Vec<IpAddr> = random_nets(&mut rng, 2000).iter().map(|n| n.addr()).collect();
        // Both edges of every range, and the addresses just outside them.
        for n in nets.iter().take(500) {
            match n {
                IpNet::V4(n) => {
                    let (lo, hi) = (u32::from(n.network()), u32::from(n.broadcast()));
                    probes.extend(
                        [lo.wrapping_sub(1), lo, hi, hi.wrapping_add(1)].map(|a| IpAddr::from(Ipv4Addr::from(a))),
                    );
                }
                IpNet::V6(n) => {
                    let (lo, hi) = (u128::from(n.network()), u128::from(n.broadcast()));
                    probes.extend(
                        [lo.wrapping_sub(1), lo, hi, hi.wrapping_add(1)]
                            .map(|a| IpAddr::from(std::net::Ipv6Addr::from(a))),
                    );
                }
            }
        }
        let mut hits = 0;
        for p in probes {
            let want = naive(&nets, p);
            assert_eq!(s.lookup(p).copied(), want.first().copied(), "lookup {p}");
            assert_eq!(s.matches(p).copied().collect::<Vec<_>>(), want, "matches {p}");
            hits += usize::from(!want.is_empty());
        }
        // The probes must exercise hits, not only misses.
        assert!(hits > 1000, "only {hits} probes hit");
    }
}
