//! What the benchmarks share (`#[path = "common/mod.rs"] mod common;` in bench/replay.rs,
//! bench/topology.rs and bench/worker.rs; each uses a part of it):
//!
//! - [`args`]: the command line, `--events N`, `--products N` and `--skip-build` of the
//!   end-to-end benchmarks ([`Workload`](args::Workload)) and a walk over any benchmark's flags ([`each_arg`](args::each_arg));
//! - [`events`]: [`generate_events`](events::generate_events), N events of the five kinds the shipped rules handle, from a
//!   fixed-seed LCG, so every run and every benchmark sees the same input for the same N; and the
//!   keyspace the shipped rules touch, written as commands by [`prefill_commands`](events::prefill_commands);
//! - [`redis`]: `redis-cli` ([`redis_cli`](redis::redis_cli), [`redis_cpu`](redis::redis_cpu), `INFO` fields) and [`Pipes`](redis::Pipes), which
//!   streams commands as RESP into one `redis-cli --pipe` per server, each command routed by the
//!   caller (a Cluster: to the primary that owns the slot of its first key);
//! - [`kafka`]: the broker of bench/worker.rs, its topics, producer and bare consumers;
//! - [`worker`]: `invalidator run` as a child of bench/worker.rs ([`Worker`](worker::Worker));
//! - [`servers`]: the `redis-server`s a benchmark starts on its own ports and stops ([`Servers`](servers::Servers)),
//!   a Redis Cluster of them;
//! - [`measure`]: [`build_release`](measure::build_release), [`run_child`](measure::run_child) (wall time, CPU and peak RSS of the child from
//!   `wait4`), [`peak_rss_kib`](measure::peak_rss_kib) of a running process, [`field`](measure::field) (a figure of the replay summary)
//!   and [`print_table`](measure::print_table).
//!
//! Nothing here picks a server: every `redis-cli` call takes the arguments that reach it
//! (`-n 8` for the local Redis's DB 8, `-p PORT` for a benchmark's own server).

pub mod args;
pub mod events;
pub mod kafka;
pub mod measure;
pub mod redis;
pub mod servers;
pub mod worker;
