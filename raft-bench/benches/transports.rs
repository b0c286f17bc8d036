//! `cargo bench -p raft-bench --bench transports`: TCP, TCP+TLS and QUIC on the same
//! workload in one run (`raft_core::testing::transport_bench`: two nodes on loopback,
//! throughput of 64 B and 64 KiB AppendEntries, round-trip latency). The three alternate for
//! `ROUNDS` rounds, so that a noisy moment hits all of them; medians are printed, then the
//! TCP / QUIC ratio of each column (above 1: TCP has more throughput, or a longer round trip).

use raft_core::testing::transport_bench::{median, run, table_header, table_row, TransportBench, Workload};
use raft_transport_quic::QuicFactory;
use raft_transport_tcp::TcpFactory;

const ROUNDS: usize = 5;

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let workload = Workload::default();
    let certs = raft_transport_tcp::generate_dev_certs("bench", [1, 2])?;
    let tcp = TcpFactory { cluster_id: "bench".into(), certs: None };
    let tls = TcpFactory { cluster_id: "bench".into(), certs: Some(certs.clone()) };
    let quic = QuicFactory { certs };
    let (mut tcp_runs, mut tls_runs, mut quic_runs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        tcp_runs.push(runtime.block_on(run(&tcp, &workload)));
        tls_runs.push(runtime.block_on(run(&tls, &workload)));
        quic_runs.push(runtime.block_on(run(&quic, &workload)));
    }
    let medians = |runs: &[TransportBench]| median(runs).ok_or_else(|| anyhow::anyhow!("no runs"));
    let (tcp, tls, quic) = (medians(&tcp_runs)?, medians(&tls_runs)?, medians(&quic_runs)?);
    println!("medians of {ROUNDS} runs each");
    println!("{}", table_header());
    println!("{}", table_row("TCP", &tcp));
    println!("{}", table_row("TCP+TLS", &tls));
    println!("{}", table_row("QUIC", &quic));
    for (name, a) in [("TCP / QUIC", &tcp), ("TCP+TLS / QUIC", &tls)] {
        let mut row = format!("| {name} |");
        for (x, y) in a.throughput.iter().zip(&quic.throughput) {
            row += &format!(
                " {:.2} | {:.2} |",
                x.messages_per_sec() / y.messages_per_sec(),
                x.mb_per_sec() / y.mb_per_sec()
            );
        }
        row += &format!(" {:.2} | {:.2} |", a.rtt_p50_us / quic.rtt_p50_us, a.rtt_p99_us / quic.rtt_p99_us);
        println!("{row}");
    }
    Ok(())
}
