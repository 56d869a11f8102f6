//! IP set membership with 10, 1k and 100k rules, beside a linear scan over
//! the same networks in the same run.
//!
//! Run: `cargo bench --bench ipfilter`.
#![allow(missing_docs, clippy::unwrap_used, clippy::cast_possible_truncation)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tokengate_ipfilter::{IpSet, naive_contains};

/// A small deterministic generator (SplitMix64): the same rules every run.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Mostly IPv4 /16 to /32 blocks, one in eight an IPv6 /32 to /64.
fn rules(count: usize, mix: &mut Mix) -> Vec<IpNet> {
    (0..count)
        .map(|i| {
            let r = mix.next();
            if i % 8 == 7 {
                let prefix = 32 + (r % 33) as u8;
                IpNet::V6(
                    Ipv6Net::new(Ipv6Addr::from(u128::from(r) << 64), prefix)
                        .unwrap()
                        .trunc(),
                )
            } else {
                let prefix = 16 + (r % 17) as u8;
                IpNet::V4(
                    Ipv4Net::new(Ipv4Addr::from((r >> 32) as u32), prefix)
                        .unwrap()
                        .trunc(),
                )
            }
        })
        .collect()
}

fn lookups(c: &mut Criterion) {
    let mut mix = Mix(7);
    let addrs: Vec<IpAddr> = (0..1024)
        .map(|_| IpAddr::V4(Ipv4Addr::from((mix.next() >> 32) as u32)))
        .collect();
    let mut group = c.benchmark_group("ip_lookup");
    for count in [10usize, 1_000, 100_000] {
        let nets = rules(count, &mut mix);
        let set = IpSet::from_nets(nets.iter().copied());
        let mut i = 0;
        group.bench_with_input(BenchmarkId::new("linear_scan", count), &count, |b, _| {
            b.iter(|| {
                i = (i + 1) % addrs.len();
                black_box(naive_contains(&nets, addrs[i]))
            });
        });
        group.bench_with_input(BenchmarkId::new("ip_set", count), &count, |b, _| {
            b.iter(|| {
                i = (i + 1) % addrs.len();
                black_box(set.contains(addrs[i]))
            });
        });
    }
    group.finish();
}

criterion_group!(benches, lookups);
criterion_main!(benches);
