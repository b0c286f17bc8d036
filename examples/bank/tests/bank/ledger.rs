//! The ledger alone: deterministic refusals (insufficient funds, unknown accounts, ...), the
//! state machine's responses, and snapshots that round-trip to an identical ledger.

use bytes::Bytes;
use raft_core::{Entry, EntryPayload, Fsm, FsmError, Membership};
use raft_example_bank::{
    decode_response, Command, Ledger, LedgerFsm, Outcome, Rejection, SnapshotError, SNAPSHOT_FORMAT,
};

fn open(ledger: &mut Ledger, account: &str) {
    assert_eq!(ledger.apply(&Command::Open { account: account.into() }), Ok(Outcome::Opened));
}

fn deposit(account: &str, amount: u64) -> Command {
    Command::Deposit { account: account.into(), amount }
}

fn transfer(from: &str, to: &str, amount: u64) -> Command {
    Command::Transfer { from: from.into(), to: to.into(), amount }
}

/// alice 100, bob 0.
fn alice_and_bob() -> Ledger {
    let mut ledger = Ledger::default();
    open(&mut ledger, "alice");
    open(&mut ledger, "bob");
    assert_eq!(ledger.apply(&deposit("alice", 100)), Ok(Outcome::Deposited { balance: 100 }));
    ledger
}

#[test]
fn a_transfer_moves_money_and_keeps_the_total() {
    let mut ledger = alice_and_bob();
    assert_eq!(
        ledger.apply(&transfer("alice", "bob", 30)),
        Ok(Outcome::Transferred { from_balance: 70, to_balance: 30 })
    );
    assert_eq!((ledger.balance("alice"), ledger.balance("bob"), ledger.total()), (Some(70), Some(30), 100));
}

#[test]
fn insufficient_funds_is_a_refusal_that_changes_nothing() {
    let mut ledger = alice_and_bob();
    let before = ledger.clone();
    assert_eq!(
        ledger.apply(&transfer("alice", "bob", 101)),
        Err(Rejection::InsufficientFunds { account: "alice".into(), balance: 100, requested: 101 })
    );
    assert_eq!(ledger, before);
    // The whole balance can go.
    assert!(ledger.apply(&transfer("alice", "bob", 100)).is_ok());
    assert_eq!(ledger.balance("alice"), Some(0));
}

#[test]
fn unknown_accounts_are_refused_on_either_side() {
    let mut ledger = alice_and_bob();
    let before = ledger.clone();
    assert_eq!(ledger.apply(&transfer("carol", "bob", 1)), Err(Rejection::UnknownAccount("carol".into())));
    assert_eq!(ledger.apply(&transfer("alice", "carol", 1)), Err(Rejection::UnknownAccount("carol".into())));
    assert_eq!(ledger.apply(&deposit("carol", 1)), Err(Rejection::UnknownAccount("carol".into())));
    assert_eq!(ledger, before);
}

#[test]
fn other_invalid_commands_are_refused() {
    let mut ledger = alice_and_bob();
    let before = ledger.clone();
    let long_name = "x".repeat(raft_example_bank::ACCOUNT_NAME_BYTES_MAX + 1);
    let cases = [
        (Command::Open { account: "alice".into() }, Rejection::AccountExists("alice".into())),
        (Command::Open { account: String::new() }, Rejection::InvalidName),
        (Command::Open { account: long_name }, Rejection::InvalidName),
        (Command::Open { account: "a\nb".into() }, Rejection::InvalidName),
        (deposit("alice", 0), Rejection::ZeroAmount),
        (deposit("alice", u64::MAX), Rejection::Overflow),
        (transfer("alice", "bob", 0), Rejection::ZeroAmount),
        (transfer("alice", "alice", 1), Rejection::SameAccount),
    ];
    for (command, rejection) in cases {
        assert_eq!(ledger.apply(&command), Err(rejection), "{command:?}");
    }
    assert_eq!(ledger.apply_bytes(b"\xff\xff\xff"), Err(Rejection::Malformed));
    assert_eq!(ledger, before);
}

#[test]
fn a_snapshot_round_trip_gives_an_identical_ledger() {
    let mut ledger = alice_and_bob();
    open(&mut ledger, "carol");
    assert!(ledger.apply(&transfer("alice", "carol", 42)).is_ok());
    ledger.set_applied_index(17);
    let snapshot = ledger.to_snapshot().unwrap();
    assert_eq!(snapshot[0], SNAPSHOT_FORMAT);
    let restored = Ledger::from_snapshot(&snapshot).unwrap();
    assert_eq!(restored, ledger);
    assert_eq!(restored.to_snapshot().unwrap(), snapshot, "the encoding is deterministic");
    // An empty ledger round-trips too.
    let empty = Ledger::default();
    assert_eq!(Ledger::from_snapshot(&empty.to_snapshot().unwrap()).unwrap(), empty);
}

#[test]
fn damaged_snapshots_are_refused() {
    let snapshot = alice_and_bob().to_snapshot().unwrap();
    assert_eq!(Ledger::from_snapshot(&[]), Err(SnapshotError::Format(None)));
    let mut other_format = snapshot.to_vec();
    other_format[0] = SNAPSHOT_FORMAT + 1;
    assert_eq!(Ledger::from_snapshot(&other_format), Err(SnapshotError::Format(Some(SNAPSHOT_FORMAT + 1))));
    assert!(matches!(Ledger::from_snapshot(&snapshot[..snapshot.len() - 1]), Err(SnapshotError::Decode(_))));
    // Bump one balance byte: the balances no longer add up to the recorded total.
    let body = postcard::to_stdvec(&alice_and_bob()).unwrap();
    let position = body.iter().position(|&b| b == 100).unwrap();
    let mut forged = vec![SNAPSHOT_FORMAT];
    forged.extend(&body);
    forged[1 + position] = 101;
    assert!(matches!(Ledger::from_snapshot(&forged), Err(SnapshotError::Inconsistent(_))));
}

fn command(index: u64, command: &Command) -> Entry {
    Entry { term: 1, index, payload: EntryPayload::Command(command.encode()) }
}

#[tokio::test]
async fn the_fsm_answers_every_entry_and_restores_snapshots() {
    let (mut fsm, view) = LedgerFsm::new();
    let entries = [
        Entry { term: 1, index: 1, payload: EntryPayload::Blank },
        command(2, &Command::Open { account: "alice".into() }),
        command(3, &Command::Open { account: "bob".into() }),
        command(4, &deposit("alice", 10)),
        command(5, &transfer("alice", "bob", 11)),
        Entry {
            term: 1,
            index: 6,
            payload: EntryPayload::Membership(Box::new(Membership::with_voters([1, 2]))),
        },
        Entry { term: 1, index: 7, payload: EntryPayload::Command(Bytes::from_static(b"\xff")) },
        command(8, &transfer("alice", "bob", 10)),
    ];
    let responses = fsm.apply(&entries).await.unwrap();
    assert_eq!(responses.len(), entries.len());
    assert!(responses[0].is_empty() && responses[5].is_empty(), "no response to non-commands");
    let decoded: Vec<_> = [1, 2, 3, 4, 6, 7].map(|i| decode_response(&responses[i]).unwrap()).into();
    assert_eq!(
        decoded,
        [
            Ok(Outcome::Opened),
            Ok(Outcome::Opened),
            Ok(Outcome::Deposited { balance: 10 }),
            Err(Rejection::InsufficientFunds { account: "alice".into(), balance: 10, requested: 11 }),
            Err(Rejection::Malformed),
            Ok(Outcome::Transferred { from_balance: 0, to_balance: 10 }),
        ]
    );
    let ledger = view.ledger();
    assert_eq!((ledger.applied_index(), ledger.balance("bob"), ledger.total()), (8, Some(10), 10));

    let snapshot = raft_core::SnapshotData::from_source(&mut *fsm.snapshot().await.unwrap(), 1024).unwrap();
    let (mut other, other_view) = LedgerFsm::new();
    other.restore(&mut snapshot.reader()).await.unwrap();
    assert_eq!(other_view.ledger(), ledger);
    // A bad snapshot is refused and leaves the state as it was.
    assert!(matches!(
        other.restore(&mut raft_core::SnapshotData::default().reader()).await,
        Err(FsmError::BadSnapshot(_))
    ));
    assert_eq!(other_view.ledger(), ledger);
}
