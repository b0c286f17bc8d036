//! `cargo bench -p raft-transport-tcp --bench transport`: the transport benchmark of
//! `raft_core::testing::transport_bench` for TCP and TCP+TLS (medians of 3 runs each).
//! `cargo bench -p raft-bench --bench transports` runs it for every transport side by side.

use raft_core::testing::transport_bench::{run_median, table_header, table_row, Workload};
use raft_transport_tcp::{generate_dev_certs, TcpFactory};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let workload = Workload::default();
    let plain = TcpFactory { cluster_id: "bench".into(), certs: None };
    let tls = TcpFactory { cluster_id: "bench".into(), certs: Some(generate_dev_certs("bench", [1, 2])?) };
    println!("{}", table_header());
    for (name, factory) in [("TCP", plain), ("TCP+TLS", tls)] {
        println!("{}", table_row(name, &runtime.block_on(run_median(&factory, &workload, 3))));
    }
    Ok(())
}
