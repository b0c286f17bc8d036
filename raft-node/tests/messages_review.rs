//! Outside review of issue 15: the refusals an operator reads (item 5: "exit 2 with the
//! message once") must read cleanly. Two multi-line string literals lack their trailing `\`,
//! so the message carries the source's indentation (a run of spaces) in the middle of a
//! sentence.

use raft_node::recover::RecoverError;
use raft_node::StartError;

fn assert_no_space_run(what: &str, message: &str) {
    assert!(!message.contains("  "), "{what}: the message carries a run of spaces: {message:?}");
}

#[test]
fn an_interrupted_seed_is_reported_without_a_run_of_spaces() {
    let message = StartError::InterruptedSeed("/var/lib/raft".into()).to_string();
    assert_no_space_run("StartError::InterruptedSeed", &message);
}

#[test]
fn another_interrupted_seed_is_reported_without_a_run_of_spaces() {
    let message =
        RecoverError::OtherInterruptedSeed { dir: "/var/lib/raft".into(), stored: 10, requested: 20 }
            .to_string();
    assert_no_space_run("RecoverError::OtherInterruptedSeed", &message);
}
