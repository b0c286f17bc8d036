//! The `raft-node` binary.

fn main() {}
