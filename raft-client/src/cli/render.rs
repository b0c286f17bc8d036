//! Human-readable renderings of API answers for `raftctl` (the `--json` output is the API's
//! JSON itself).

use std::collections::BTreeMap;

use crate::api::{
    BalanceView, KeyList, KeyValue, LeaderView, LogView, MemberRole, MembersView, RoleView, Service,
    ServiceList, ServiceNode, StatusView, WatchEvent, WatchKind, WriteResult,
};
use crate::cli::table::Table;
use crate::error::ClientError;
use crate::Endpoint;

/// Characters of the state hash shown in the status table.
const HASH_CHARS_SHOWN: usize = 12;

/// One row per node: its status, or why it did not answer.
pub fn statuses(rows: &[(Endpoint, Result<StatusView, ClientError>)]) -> String {
    let mut t = Table::new([
        "ENDPOINT", "ID", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "LAST", "SNAPSHOT", "KEYS", "HASH",
        "NOTE",
    ]);
    for (endpoint, status) in rows {
        match status {
            Ok(s) => {
                let mut notes = Vec::new();
                if s.joint {
                    notes.push("joint".to_owned());
                }
                if let Some(to) = s.leadership_transfer {
                    notes.push(format!("transfer to {to}"));
                }
                if let Some(fatal) = &s.fatal {
                    notes.push(format!("fatal: {fatal}"));
                }
                if let Some(index) = s.recovering_to_index {
                    notes.push(format!("recovering lost data to {index}"));
                }
                if s.no_space {
                    notes.push("NOSPACE: state at its quota".to_owned());
                }
                if s.starting.is_some() {
                    notes.push("starting: waiting for the other members".to_owned());
                }
                if s.peer_security == crate::api::PeerSecurity::InsecurePlaintext {
                    notes.push("INSECURE plaintext peers".to_owned());
                }
                t.row([
                    endpoint.to_string(),
                    s.id.to_string(),
                    role(s.role).to_owned(),
                    s.term.to_string(),
                    opt(s.leader),
                    s.commit_index.to_string(),
                    s.applied_index.to_string(),
                    s.last_log_index.to_string(),
                    s.snapshot_index.to_string(),
                    s.keys.to_string(),
                    s.state_hash.chars().take(HASH_CHARS_SHOWN).collect(),
                    notes.join(", "),
                ]);
            }
            Err(e) => {
                let mut row = vec![endpoint.to_string()];
                row.extend(std::iter::repeat_n("-".to_owned(), 10));
                let note = match e {
                    ClientError::Transport { source, .. } => {
                        format!("unreachable: {}", super::innermost_cause(source))
                    }
                    other => format!("error: {}", super::error_line(other)),
                };
                row.push(note);
                t.row(row);
            }
        }
    }
    t.render()
}

/// The leader line.
pub fn leader(view: &LeaderView) -> String {
    match (view.leader, view.client_addr.as_deref()) {
        (Some(id), Some(addr)) => format!("leader {id} at {addr} (term {})\n", view.term),
        (Some(id), None) => format!("leader {id}, address unknown (term {})\n", view.term),
        (None, _) => format!("no leader known (term {})\n", view.term),
    }
}

/// A key as `field value` lines.
pub fn key_value(kv: &KeyValue) -> String {
    let mut t = Table::without_header();
    t.row(["key", kv.key.as_str()])
        .row(["value", kv.value.as_str()])
        .row(["version", &kv.version.to_string()])
        .row(["created", &kv.create_index.to_string()])
        .row(["modified", &kv.mod_index.to_string()]);
    t.render()
}

/// The outcome of a write.
pub fn write_result(w: &WriteResult) -> String {
    match (&w.current, &w.prev) {
        (Some(cur), _) => format!("OK: index {}, version {}\n", w.index, cur.version),
        (None, Some(prev)) => format!("OK: index {}, deleted version {}\n", w.index, prev.version),
        (None, None) => format!("OK: index {}\n", w.index),
    }
}

/// Keys in a table.
pub fn key_list(list: &KeyList) -> String {
    let mut t = Table::new(["KEY", "VALUE", "VERSION", "MODIFIED"]);
    for kv in &list.items {
        t.row([kv.key.as_str(), kv.value.as_str(), &kv.version.to_string(), &kv.mod_index.to_string()]);
    }
    t.render()
}

/// Members in a table.
pub fn members(view: &MembersView) -> String {
    let mut t = Table::new(["ID", "ROLE", "RAFT_ADDR", "CLIENT_ADDR", "NEXT", "MATCH", "LAG"]);
    for m in &view.members {
        t.row([
            m.id.to_string(),
            match m.role {
                MemberRole::Voter => "voter".to_owned(),
                MemberRole::Learner => "learner".to_owned(),
            },
            m.raft_addr.clone().unwrap_or_else(|| "-".into()),
            m.client_addr.clone().unwrap_or_else(|| "-".into()),
            opt(m.next_index),
            opt(m.match_index),
            opt(m.lag),
        ]);
    }
    let mut out = t.render();
    if view.joint {
        out.push_str("(joint configuration: a membership change is in progress)\n");
    }
    out
}

/// Log entries in a table, after a line with the log's bounds.
pub fn log(view: &LogView) -> String {
    let mut out =
        format!("first {}, last {}, commit {}\n", view.first_index, view.last_index, view.commit_index);
    let mut t = Table::new(["INDEX", "TERM", "KIND", "SUMMARY"]);
    for e in &view.entries {
        t.row([e.index.to_string(), e.term.to_string(), e.kind.clone(), e.summary.clone()]);
    }
    out.push_str(&t.render());
    out
}

/// Services in a table.
pub fn services(list: &ServiceList) -> String {
    let mut t = Table::new(["NAME", "TYPE", "NODES", "UP"]);
    for s in &list.services {
        let up = s.nodes.iter().filter(|n| !n.down).count();
        t.row([s.name.clone(), s.kind.clone(), s.nodes.len().to_string(), up.to_string()]);
    }
    t.render()
}

/// One service and its nodes.
pub fn service(s: &Service) -> String {
    let mut out = format!("service {} (type {})\n", s.name, s.kind);
    out.push_str(&nodes_table(&s.nodes));
    out
}

/// The node `balance` picked.
pub fn balance(view: &BalanceView) -> String {
    nodes_table(std::slice::from_ref(&view.node))
}

fn nodes_table(nodes: &[ServiceNode]) -> String {
    let mut t = Table::new(["ID", "ADDRESS", "PRIORITY", "STATE", "ATTRIBUTES"]);
    for n in nodes {
        t.row([
            n.id.clone(),
            n.address.clone(),
            n.priority.to_string(),
            if n.down { "down" } else { "up" }.to_owned(),
            attributes(&n.attributes),
        ]);
    }
    t.render()
}

/// One watch event on one line.
pub fn watch_event(e: &WatchEvent) -> String {
    let kind = match e.kind {
        WatchKind::Put => "put",
        WatchKind::Delete => "delete",
        WatchKind::ServiceRegistered => "service_registered",
        WatchKind::ServiceRemoved => "service_removed",
        WatchKind::MemberAddress => "member_address",
    };
    let mut t = Table::without_header();
    let mut row = vec![e.index.to_string(), kind.to_owned(), e.key.clone()];
    if let Some(value) = &e.value {
        row.push(format!("= {value}"));
    }
    if let Some(version) = e.version {
        row.push(format!("(version {version})"));
    }
    t.row(row);
    t.render()
}

fn attributes(attrs: &BTreeMap<String, String>) -> String {
    attrs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

fn role(r: RoleView) -> &'static str {
    match r {
        RoleView::Follower => "follower",
        RoleView::PreCandidate => "pre-candidate",
        RoleView::Candidate => "candidate",
        RoleView::Leader => "leader",
        RoleView::Learner => "learner",
    }
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::api::{LogEntryView, MemberView};

    fn member(id: u64, role: MemberRole) -> MemberView {
        MemberView {
            id,
            role,
            raft_addr: Some(format!("127.0.0.1:900{id}")),
            client_addr: Some(format!("127.0.0.1:808{id}")),
            registered: true,
            next_index: None,
            match_index: None,
            lag: None,
            last_contact_ms: None,
        }
    }

    fn status(id: u64, role: RoleView) -> StatusView {
        StatusView {
            cluster: "dev".into(),
            id,
            term: 7,
            role,
            leader: Some(1),
            commit_index: 1204,
            applied_index: 1204,
            last_log_index: 1205,
            last_log_term: 7,
            snapshot_index: 1000,
            state_hash: "9f86d081884c7d659a2feaa0c55ad015".into(),
            keys: 42,
            state_bytes: 0,
            members: vec![member(1, MemberRole::Voter), member(2, MemberRole::Voter)],
            joint: false,
            leadership_transfer: None,
            fatal: None,
            peer_security: crate::api::PeerSecurity::MutualTls,
            warnings: Vec::new(),
            recovering_to_index: None,
            starting: None,
            quota_bytes: 0,
            no_space: false,
            activity: None,
            leader_changes: Vec::new(),
        }
    }

    #[test]
    fn status_table() {
        let mut follower = status(2, RoleView::Follower);
        follower.joint = true;
        follower.leadership_transfer = Some(3);
        let rows = vec![
            (Endpoint::parse("127.0.0.1:8081").unwrap(), Ok(status(1, RoleView::Leader))),
            (Endpoint::parse("127.0.0.1:8082").unwrap(), Ok(follower)),
            (
                Endpoint::parse("127.0.0.1:8083").unwrap(),
                Err(ClientError::Timeout {
                    endpoint: "http://127.0.0.1:8083".into(),
                    after: Duration::from_secs(5),
                }),
            ),
        ];
        let expected = "\
ENDPOINT               ID  ROLE      TERM  LEADER  COMMIT  APPLIED  LAST  SNAPSHOT  KEYS  HASH          NOTE
http://127.0.0.1:8081  1   leader    7     1       1204    1204     1205  1000      42    9f86d081884c
http://127.0.0.1:8082  2   follower  7     1       1204    1204     1205  1000      42    9f86d081884c  joint, transfer to 3
http://127.0.0.1:8083  -   -         -     -       -       -        -     -         -     -             error: timeout: no answer from http://127.0.0.1:8083 within 5s
";
        assert_eq!(statuses(&rows), expected);
    }

    #[test]
    fn key_list_table() {
        let kv = |key: &str, value: &str, version, mod_index| KeyValue {
            key: key.into(),
            value: value.into(),
            version,
            create_index: 1,
            mod_index,
        };
        let list = KeyList {
            items: vec![kv("app/a", "1", 1, 10), kv("app/bb", "two\nlines", 12, 1009)],
            truncated: false,
            index: 1009,
            next_start_after: None,
        };
        let expected = "\
KEY     VALUE       VERSION  MODIFIED
app/a   1           1        10
app/bb  two\\nlines  12       1009
";
        assert_eq!(key_list(&list), expected);
        let empty = KeyList { items: vec![], truncated: false, index: 0, next_start_after: None };
        assert_eq!(key_list(&empty), "KEY  VALUE  VERSION  MODIFIED\n");
    }

    #[test]
    fn members_log_and_writes() {
        let view = MembersView {
            members: vec![member(1, MemberRole::Voter), member(4, MemberRole::Learner)],
            joint: true,
        };
        assert_eq!(
            members(&view),
            "\
ID  ROLE     RAFT_ADDR       CLIENT_ADDR     NEXT  MATCH  LAG
1   voter    127.0.0.1:9001  127.0.0.1:8081  -     -      -
4   learner  127.0.0.1:9004  127.0.0.1:8084  -     -      -
(joint configuration: a membership change is in progress)
"
        );
        let log_view = LogView {
            entries: vec![LogEntryView {
                index: 5,
                term: 2,
                kind: "command".into(),
                summary: "put a=1".into(),
            }],
            first_index: 1,
            last_index: 5,
            commit_index: 5,
        };
        assert_eq!(
            log(&log_view),
            "first 1, last 5, commit 5\nINDEX  TERM  KIND     SUMMARY\n5      2     command  put a=1\n"
        );
        let w = WriteResult { index: 9, current: None, prev: None };
        assert_eq!(write_result(&w), "OK: index 9\n");
    }
}
