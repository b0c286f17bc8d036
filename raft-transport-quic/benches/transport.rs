//! `cargo bench -p raft-transport-quic --bench transport`: the transport benchmark of
//! `raft_core::testing::transport_bench` for QUIC (medians of 3 runs).
//! `cargo bench -p raft-bench --bench transports` runs it for every transport side by side.

use raft_core::testing::transport_bench::{run_median, table_header, table_row, Workload};
use raft_transport_quic::{generate_dev_certs, QuicFactory};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let factory = QuicFactory { certs: generate_dev_certs("bench", [1, 2])? };
    println!("{}", table_header());
    println!("{}", table_row("QUIC", &runtime.block_on(run_median(&factory, &Workload::default(), 3))));
    Ok(())
}
