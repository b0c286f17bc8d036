//! Command-line parsing of every `raftctl` command, and the requests built from them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use super::*;
use crate::api::ServiceNode;

fn parse(args: &[&str]) -> Cli {
    let mut full = vec!["raftctl", "--endpoints", "127.0.0.1:8081"];
    full.extend_from_slice(args);
    match Cli::try_parse_from(&full) {
        Ok(cli) => cli,
        Err(e) => panic!("{args:?} did not parse: {e}"),
    }
}

fn command(args: &[&str]) -> Command {
    parse(args).command
}

fn refused(args: &[&str]) -> clap::error::ErrorKind {
    let mut full = vec!["raftctl", "--endpoints", "127.0.0.1:8081"];
    full.extend_from_slice(args);
    match Cli::try_parse_from(&full) {
        Ok(cli) => panic!("{args:?} parsed as {cli:?}"),
        Err(e) => e.kind(),
    }
}

fn node(id: &str, address: &str, priority: u32, attributes: &[(&str, &str)]) -> ServiceNode {
    ServiceNode {
        id: id.into(),
        address: address.into(),
        priority,
        attributes: attributes.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
        down: false,
    }
}

#[test]
fn global_options() {
    let cli = Cli::try_parse_from(["raftctl", "status"]).unwrap();
    if std::env::var_os("RAFT_ENDPOINTS").is_none() {
        assert_eq!(cli.endpoints, ["127.0.0.1:8081", "127.0.0.1:8082", "127.0.0.1:8083"]);
    }
    assert!(!cli.json);
    assert_eq!(cli.timeout, Duration::from_secs(5));
    let cli =
        Cli::try_parse_from(["raftctl", "status", "--endpoints", "a:1,b:2", "--json", "--timeout", "250ms"])
            .unwrap();
    assert_eq!(cli.endpoints, ["a:1", "b:2"]);
    assert!(cli.json);
    assert_eq!(cli.timeout, Duration::from_millis(250));
    assert_eq!(refused(&["--timeout", "0s", "status"]), clap::error::ErrorKind::ValueValidation);
    assert_eq!(refused(&["--timeout", "5h", "status"]), clap::error::ErrorKind::ValueValidation);
    assert_eq!(refused(&[]), clap::error::ErrorKind::MissingSubcommand);
    assert_eq!(refused(&["frobnicate"]), clap::error::ErrorKind::InvalidSubcommand);
}

#[test]
fn durations() {
    assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
    assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
    assert_eq!(parse_duration("750ms"), Ok(Duration::from_millis(750)));
    assert!(parse_duration("1.5s").is_err());
    assert!(parse_duration("s").is_err());
    assert!(parse_duration("3h").is_err());
}

#[test]
fn key_commands() {
    assert_eq!(command(&["status"]), Command::Status);
    assert_eq!(command(&["leader"]), Command::Leader);
    assert_eq!(command(&["put", "k", "v w"]), Command::Put { key: "k".into(), value: "v w".into() });
    assert_eq!(command(&["get", "k"]), Command::Get { key: "k".into(), consistency: None });
    assert_eq!(
        command(&["get", "k", "--consistency", "lease"]),
        Command::Get { key: "k".into(), consistency: Some(ConsistencyArg::Lease) }
    );
    assert_eq!(
        command(&["get", "k", "--consistency", "local"]),
        Command::Get { key: "k".into(), consistency: Some(ConsistencyArg::Local) }
    );
    assert_eq!(refused(&["get", "k", "--consistency", "eventual"]), clap::error::ErrorKind::InvalidValue);
    assert_eq!(command(&["del", "k"]), Command::Del { key: "k".into() });
    assert_eq!(command(&["delete", "k"]), Command::Del { key: "k".into() });
    assert_eq!(
        command(&["list"]),
        Command::List { prefix: None, limit: None, after: None, consistency: None }
    );
    assert_eq!(
        command(&["list", "app/", "--limit", "10", "--after", "app/x", "--consistency", "linearizable"]),
        Command::List {
            prefix: Some("app/".into()),
            limit: Some(10),
            after: Some("app/x".into()),
            consistency: Some(ConsistencyArg::Linearizable)
        }
    );
    assert_eq!(command(&["log"]), Command::Log { from: None, limit: None });
    assert_eq!(
        command(&["log", "--from", "5", "--limit", "20"]),
        Command::Log { from: Some(5), limit: Some(20) }
    );
    assert_eq!(refused(&["put", "k"]), clap::error::ErrorKind::MissingRequiredArgument);
}

#[test]
fn cas_needs_one_expectation_and_one_outcome() {
    let Command::Cas(args) = command(&["cas", "k", "--expect-version", "3", "--value", "v"]) else {
        panic!("not cas")
    };
    assert_eq!(
        cas_request(&args),
        CasRequest { expected_version: Some(3), expected_value: None, value: Some("v".into()) }
    );
    let Command::Cas(args) = command(&["cas", "k", "--expect-value", "old", "--delete"]) else {
        panic!("not cas")
    };
    assert_eq!(
        cas_request(&args),
        CasRequest { expected_version: None, expected_value: Some(Some("old".into())), value: None }
    );
    let Command::Cas(args) = command(&["cas", "k", "--expect-absent", "--value", "new"]) else {
        panic!("not cas")
    };
    assert_eq!(
        cas_request(&args),
        CasRequest { expected_version: None, expected_value: Some(None), value: Some("new".into()) }
    );
    use clap::error::ErrorKind;
    assert_eq!(refused(&["cas", "k", "--value", "v"]), ErrorKind::MissingRequiredArgument);
    assert_eq!(refused(&["cas", "k", "--expect-absent"]), ErrorKind::MissingRequiredArgument);
    assert_eq!(
        refused(&["cas", "k", "--expect-absent", "--expect-version", "1", "--value", "v"]),
        ErrorKind::ArgumentConflict
    );
    assert_eq!(
        refused(&["cas", "k", "--expect-absent", "--value", "v", "--delete"]),
        ErrorKind::ArgumentConflict
    );
}

#[test]
fn member_commands() {
    assert_eq!(command(&["members"]), Command::Members { command: None });
    assert_eq!(command(&["members", "list"]), Command::Members { command: Some(MembersCommand::List) });
    assert_eq!(
        command(&[
            "members",
            "add",
            "4",
            "--raft-addr",
            "10.0.0.4:9000",
            "--client-addr",
            "10.0.0.4:8080",
            "--voter"
        ]),
        Command::Members {
            command: Some(MembersCommand::Add {
                id: 4,
                raft_addr: "10.0.0.4:9000".into(),
                client_addr: "10.0.0.4:8080".into(),
                voter: true
            })
        }
    );
    assert_eq!(
        refused(&["members", "add", "4", "--raft-addr", "x:1"]),
        clap::error::ErrorKind::MissingRequiredArgument
    );
    assert_eq!(
        command(&["members", "promote", "4"]),
        Command::Members { command: Some(MembersCommand::Promote { id: 4, force: false }) }
    );
    assert_eq!(
        command(&["members", "promote", "4", "--force"]),
        Command::Members { command: Some(MembersCommand::Promote { id: 4, force: true }) }
    );
    assert_eq!(
        command(&["members", "remove", "2"]),
        Command::Members { command: Some(MembersCommand::Remove { id: 2, force: false }) }
    );
    assert_eq!(
        command(&["members", "remove", "2", "--force"]),
        Command::Members { command: Some(MembersCommand::Remove { id: 2, force: true }) }
    );
    assert_eq!(refused(&["members", "remove", "two"]), clap::error::ErrorKind::ValueValidation);
    assert_eq!(command(&["transfer-leader"]), Command::TransferLeader { id: None });
    assert_eq!(command(&["transfer-leader", "3"]), Command::TransferLeader { id: Some(3) });
}

#[test]
fn service_commands() {
    let s = |c: ServicesCommand| Command::Services { command: c };
    assert_eq!(command(&["services", "list"]), s(ServicesCommand::List));
    assert_eq!(command(&["services", "get", "web"]), s(ServicesCommand::Get { name: "web".into() }));
    assert_eq!(command(&["services", "remove", "web"]), s(ServicesCommand::Remove { name: "web".into() }));
    assert_eq!(
        command(&["services", "down", "web", "w1"]),
        s(ServicesCommand::Down { name: "web".into(), node: "w1".into() })
    );
    assert_eq!(
        command(&["services", "up", "web", "w1"]),
        s(ServicesCommand::Up { name: "web".into(), node: "w1".into() })
    );
    let cmd = command(&[
        "services",
        "register",
        "web",
        "--type",
        "http",
        "--node",
        "id=w1,addr=10.0.0.1:80,priority=3,attr.zone=eu,attr.rack=r1",
        "--node",
        "id=w2,addr=10.0.0.2:80",
    ]);
    let Command::Services { command: ServicesCommand::Register(args) } = cmd else { panic!("not register") };
    let spec = service_spec(&args).unwrap();
    assert_eq!(spec.kind, "http");
    assert_eq!(
        spec.nodes,
        vec![
            node("w1", "10.0.0.1:80", 3, &[("rack", "r1"), ("zone", "eu")]),
            node("w2", "10.0.0.2:80", 1, &[])
        ]
    );
    let cmd = command(&["services", "register", "web", "--file", "spec.json"]);
    assert_eq!(
        cmd,
        s(ServicesCommand::Register(RegisterArgs {
            name: "web".into(),
            kind: None,
            nodes: vec![],
            file: Some(PathBuf::from("spec.json"))
        }))
    );
    use clap::error::ErrorKind;
    assert_eq!(refused(&["services", "register", "web"]), ErrorKind::MissingRequiredArgument);
    assert_eq!(
        refused(&["services", "register", "web", "--type", "t", "--file", "f"]),
        ErrorKind::ArgumentConflict
    );
    assert_eq!(
        refused(&["services", "register", "web", "--type", "t", "--node", "addr=1:1"]),
        ErrorKind::ValueValidation
    );
    assert_eq!(
        command(&["balance", "web"]),
        Command::Balance { name: "web".into(), strategy: StrategyArg::RoundRobin }
    );
    assert_eq!(
        command(&["balance", "web", "--strategy", "random"]),
        Command::Balance { name: "web".into(), strategy: StrategyArg::Random }
    );
    assert_eq!(
        command(&["balance", "web", "--strategy", "round-robin"]),
        Command::Balance { name: "web".into(), strategy: StrategyArg::RoundRobin }
    );
    assert_eq!(command(&["watch"]), Command::Watch { prefix: None, from_index: None });
    assert_eq!(
        command(&["watch", "app/", "--from-index", "100"]),
        Command::Watch { prefix: Some("app/".into()), from_index: Some(100) }
    );
}

#[test]
fn service_node_syntax() {
    let n = parse_service_node("id=a, addr=h:1 ,down=true,attr.k=v=w").unwrap();
    assert_eq!(n.id, "a");
    assert_eq!(n.address, "h:1");
    assert!(n.down);
    assert_eq!(n.attributes, BTreeMap::from([("k".to_owned(), "v=w".to_owned())]));
    for bad in [
        "addr=h:1",
        "id=a",
        "id=a,addr=h:1,priority=x",
        "id=a,addr=h:1,colour=red",
        "id=a,id=b,addr=h:1",
        "id=a,addr=h:1,attr.=x",
        "id=a,addr=h:1,novalue",
        "id=,addr=h:1",
    ] {
        assert!(parse_service_node(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn spec_files_are_read_and_bounded() {
    let dir = std::env::temp_dir().join(format!("raftctl-spec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.json");
    std::fs::write(&good, r#"{"type":"http","nodes":[{"id":"w1","address":"10.0.0.1:80"}]}"#).unwrap();
    let args = RegisterArgs { name: "web".into(), kind: None, nodes: vec![], file: Some(good) };
    let spec = service_spec(&args).unwrap();
    assert_eq!(spec.nodes, vec![node("w1", "10.0.0.1:80", 1, &[])]);
    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"{"type":"http","nodes":[],"extra":1}"#).unwrap();
    let args = RegisterArgs { file: Some(bad), ..args };
    assert!(service_spec(&args).is_err());
    let missing = RegisterArgs { file: Some(dir.join("missing.json")), ..args };
    assert!(service_spec(&missing).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn error_lines() {
    use crate::api::{ApiError, ErrorCode, KeyValue};
    let api = ClientError::Api {
        status: 400,
        error: Box::new(ApiError::new(ErrorCode::BadRequest, "key is empty")),
    };
    assert_eq!(error_line(&api), "bad_request: key is empty");
    let cas = ClientError::CasFailed {
        current: Some(KeyValue {
            key: "k".into(),
            value: "v".into(),
            version: 4,
            create_index: 1,
            mod_index: 9,
        }),
    };
    assert_eq!(
        error_line(&cas),
        "cas_failed: the key is at version 4 (modified at index 9) with value \"v\""
    );
    let exhausted = ClientError::RetriesExhausted {
        attempts: 3,
        last: Box::new(ClientError::Api {
            status: 503,
            error: Box::new(ApiError::new(ErrorCode::NoLeader, "election")),
        }),
    };
    assert_eq!(error_line(&exhausted), "no_leader: election (gave up after 3 attempts)");
}

#[tokio::test]
async fn bad_endpoints_and_usage_give_exit_codes() {
    let cli = Cli::try_parse_from(["raftctl", "--endpoints", "ftp://x:1", "status"]).unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    assert_eq!(execute(&cli, &mut out, &mut err).await.unwrap(), EXIT_FAILURE);
    let err = String::from_utf8(err).unwrap();
    assert!(err.starts_with("error: invalid_endpoint: "), "{err}");
    // https without a CA to check the server with is a usage error, before any connection.
    let cli = Cli::try_parse_from(["raftctl", "--endpoints", "https://x:1", "status"]).unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    assert_eq!(execute(&cli, &mut out, &mut err).await.unwrap(), EXIT_USAGE);
    assert!(String::from_utf8(err).unwrap().contains("--cacert"));
    let cli = Cli::try_parse_from(["raftctl", "--cacert", "/nonexistent/ca.pem", "status"]).unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    assert_eq!(execute(&cli, &mut out, &mut err).await.unwrap(), EXIT_USAGE);
    assert!(String::from_utf8(err).unwrap().contains("cannot read /nonexistent/ca.pem"));
    assert_eq!(
        run(["raftctl", "--cert", "c.pem", "status"]).await.unwrap(),
        EXIT_USAGE,
        "--cert needs --key"
    );
    // A token never goes to another machine in clear unless asked for.
    let cli =
        Cli::try_parse_from(["raftctl", "--endpoints", "10.9.9.9:1", "--token", "t0ken", "status"]).unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    assert_eq!(execute(&cli, &mut out, &mut err).await.unwrap(), EXIT_USAGE);
    assert!(String::from_utf8(err).unwrap().contains("in clear"));
    let cli = Cli::try_parse_from([
        "raftctl",
        "--endpoints",
        "10.9.9.9:1",
        "--token",
        "t0ken",
        "--insecure-plain-http",
        "--timeout",
        "200ms",
        "status",
    ])
    .unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    assert_eq!(
        execute(&cli, &mut out, &mut err).await.unwrap(),
        EXIT_FAILURE,
        "sent (and failed to connect)"
    );
    assert_eq!(run(["raftctl", "nonsense"]).await.unwrap(), EXIT_USAGE);
    assert_eq!(run(["raftctl", "--help"]).await.unwrap(), 0);
}

#[test]
fn the_local_cluster_token_goes_only_to_local_endpoints() {
    let repo = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(repo.path().join("target/cluster")).unwrap();
    std::fs::write(repo.path().join(LOCAL_CLUSTER_TOKEN_FILE), "local-dev-admin-token\n").unwrap();
    std::env::set_current_dir(repo.path()).unwrap();
    let token = |endpoints: &str| {
        let mut cli = parse(&["status"]);
        cli.endpoints = endpoints.split(',').map(str::to_owned).collect();
        cli.token = None;
        cli.token_file = None;
        token_of(&cli).unwrap()
    };
    assert_eq!(
        token("127.0.0.1:8081,localhost:8082,http://[::1]:8083").as_deref(),
        Some("local-dev-admin-token")
    );
    assert_eq!(token("127.0.0.1:8081,10.0.0.7:8081"), None, "a remote endpoint gets no implicit token");
    assert_eq!(token("db.example.com:8081"), None);
    for remote in ["10.0.0.7:8081", "http://example.com:80", "127.0.0.1.example.com:1"] {
        assert!(!is_loopback_endpoint(remote), "{remote}");
    }
    // The local cluster's CA: https for bare local endpoints once `cluster up` wrote it.
    let tls = |endpoints: &str| {
        let mut cli = parse(&["status"]);
        cli.endpoints = endpoints.split(',').map(str::to_owned).collect();
        tls_of(&cli).unwrap().map(|t| t.ca_cert_pem)
    };
    assert_eq!(tls("127.0.0.1:8081"), None, "no CA file: plain http");
    std::fs::write(repo.path().join(LOCAL_CLUSTER_CA_FILE), "local-ca-pem").unwrap();
    assert_eq!(tls("127.0.0.1:8081,localhost:8082").as_deref(), Some("local-ca-pem"));
    assert_eq!(tls("http://127.0.0.1:8081"), None, "an explicit scheme is kept");
    assert_eq!(tls("127.0.0.1:8081,10.0.0.7:8081"), None, "a remote endpoint is not assumed local");
}
