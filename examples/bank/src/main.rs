//! The bank demo: three nodes in one process on 127.0.0.1, each with its own RocksDB
//! directory under a temporary directory. It moves money around, stops the leader, keeps
//! serving under the new leader, restarts the stopped node from its data directory, and checks
//! that every node holds the same balances, that they match a local replay of every
//! acknowledged command, and that no money appeared or vanished. Exits with 1 if a check fails.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use raft_core::{Config, NodeId};
use raft_example_bank::{free_local_addrs, BankError, BankNode, BankNodeConfig, Command, Ledger, Rejection};

/// How long the demo waits for an election or a restarted node.
const WAIT: Duration = Duration::from_secs(10);
/// The accounts and their opening deposits.
const DEPOSITS: [(&str, u64); 3] = [("alice", 1_000), ("bob", 500), ("carol", 250)];

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => {
            println!("\nall checks passed");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("\ndemo FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<()> {
    let dir = tempfile::tempdir().context("creating the temporary directory")?;
    let addrs = free_local_addrs(3).context("reserving ports")?;
    let ids: Vec<NodeId> = vec![1, 2, 3];
    // Small snapshot thresholds, so that the restarted node catches up through a snapshot.
    let raft = Config { snapshot_threshold_entries: 20, snapshot_keep_entries: 5, ..Config::default() };
    let configs: BTreeMap<NodeId, BankNodeConfig> = ids
        .iter()
        .zip(&addrs)
        .map(|(&id, &listen)| {
            let peers = ids.iter().zip(&addrs).filter(|(&p, _)| p != id).map(|(&p, &a)| (p, a)).collect();
            let data_dir = dir.path().join(format!("node-{id}"));
            let config = BankNodeConfig {
                raft: raft.clone(),
                ..BankNodeConfig::new(id, "bank", listen, peers, data_dir)
            };
            (id, config)
        })
        .collect();
    println!("data under {}", dir.path().display());

    let mut nodes = BTreeMap::new();
    for (id, config) in &configs {
        println!("node {id}: listening on {}", config.listen);
        nodes.insert(*id, BankNode::start(config.clone()).await?);
    }
    let leader = node(&nodes, 1)?.wait_for_leader(WAIT, None).await?;
    println!("node {leader} leads");

    // Every acknowledged command, replayed locally: the cluster must end in the same state.
    let mut model = Ledger::default();
    println!("\n== opening accounts");
    for (account, amount) in DEPOSITS {
        for command in
            [Command::Open { account: account.into() }, Command::Deposit { account: account.into(), amount }]
        {
            execute(node(&nodes, leader)?, &command, &mut model).await?;
        }
    }
    let total = model.total();
    println!("opened {DEPOSITS:?}: {total} in the bank");

    println!("\n== transfers through every node (followers forward to the leader)");
    transfers(&nodes, &ids, 0..12, &mut model).await?;
    let overdraft = Command::Transfer { from: "carol".into(), to: "alice".into(), amount: 1_000_000 };
    match node(&nodes, leader)?.execute(&overdraft).await {
        Err(BankError::Rejected(rejection @ Rejection::InsufficientFunds { .. })) => {
            println!("overdraft refused, as it must be: {rejection}");
        }
        other => bail!("the overdraft should be refused, got {other:?}"),
    }
    show(&nodes).await?;

    println!("\n== stopping the leader, node {leader}");
    let killed = leader;
    nodes.remove(&killed).context("the leader runs")?.shutdown().await?;
    let survivors: Vec<NodeId> = nodes.keys().copied().collect();
    let mut leader = killed;
    for id in &survivors {
        leader = node(&nodes, *id)?.wait_for_leader(WAIT, Some(killed)).await?;
    }
    ensure!(leader != killed && nodes.contains_key(&leader), "a surviving node leads");
    println!("node {leader} leads now; the cluster keeps serving");
    transfers(&nodes, &survivors, 12..42, &mut model).await?;
    show(&nodes).await?;

    println!("\n== restarting node {killed} from its data directory");
    let config = configs.get(&killed).context("config")?.clone();
    let restarted = BankNode::start(config).await?;
    let stale = restarted.local_ledger();
    restarted.wait_for_leader(WAIT, None).await?;
    // A linearizable read on the restarted node waits until it has caught up.
    let caught_up = restarted.ledger().await?;
    let status = restarted.raft().status().protocol;
    println!(
        "node {killed}: restored at index {}, caught up to index {} (snapshot at {})",
        stale.applied_index(),
        caught_up.applied_index(),
        status.snapshot.index
    );
    nodes.insert(killed, restarted);
    transfers(&nodes, &ids, 42..48, &mut model).await?;

    println!("\n== final balances");
    let mut failures = Vec::new();
    for (id, node) in &nodes {
        let ledger = node.ledger().await?;
        let sum: u64 = ledger.balances().values().sum();
        println!("node {id}: {}", describe(ledger.balances()));
        if ledger.balances() != model.balances() {
            failures.push(format!("node {id}'s balances differ from the acknowledged commands"));
        }
        if sum != total || ledger.total() != total {
            failures.push(format!("node {id} holds {sum} (recorded {}), not {total}", ledger.total()));
        }
    }
    println!("expected: {}", describe(model.balances()));
    for (_, node) in nodes {
        node.shutdown().await?;
    }
    ensure!(failures.is_empty(), "{}", failures.join("; "));
    println!("every node agrees and the total is conserved ({total})");
    Ok(())
}

fn node(nodes: &BTreeMap<NodeId, BankNode>, id: NodeId) -> Result<&BankNode> {
    nodes.get(&id).with_context(|| format!("node {id} is not running"))
}

/// Proposes `command` on `node`, and replays it on `model` once acknowledged.
async fn execute(node: &BankNode, command: &Command, model: &mut Ledger) -> Result<()> {
    let outcome = node.execute(command).await;
    let expected = model.apply(command);
    match (outcome, expected) {
        (Ok(got), Ok(want)) if got == want => Ok(()),
        (Err(BankError::Rejected(got)), Err(want)) if got == want => Ok(()),
        (got, want) => bail!("node {}: {command:?} gave {got:?}, expected {want:?}", node.id()),
    }
}

/// Transfers number `rounds` in a ring alice → bob → carol → alice, each through the next of
/// `through`.
async fn transfers(
    nodes: &BTreeMap<NodeId, BankNode>,
    through: &[NodeId],
    rounds: std::ops::Range<u64>,
    model: &mut Ledger,
) -> Result<()> {
    let count = rounds.end - rounds.start;
    for round in rounds {
        let from = DEPOSITS[round as usize % DEPOSITS.len()].0;
        let to = DEPOSITS[(round as usize + 1) % DEPOSITS.len()].0;
        let via = through[round as usize % through.len()];
        let command = Command::Transfer { from: from.into(), to: to.into(), amount: 10 + round % 7 * 5 };
        execute(node(nodes, via)?, &command, model).await?;
    }
    println!("{count} transfers acknowledged through nodes {through:?}");
    Ok(())
}

/// Prints every running node's balances (a linearizable read on each).
async fn show(nodes: &BTreeMap<NodeId, BankNode>) -> Result<()> {
    for (id, node) in nodes {
        println!("  node {id}: {}", describe(&node.balances().await?));
    }
    Ok(())
}

fn describe(balances: &BTreeMap<String, u64>) -> String {
    let accounts: Vec<String> = balances.iter().map(|(a, b)| format!("{a} {b}")).collect();
    format!("{} (total {})", accounts.join(", "), balances.values().sum::<u64>())
}
