//! A TCP [`Transport`](raft_core::Transport) for raft-core.
