//! The `raft-node` binary as an operator runs it: three processes started from config files,
//! `raft-node ctl` against them, SIGTERM for a graceful stop, a restart that keeps the data,
//! and `check-config` on a broken file. The nodes run the documented set-up: mutual TLS between
//! peers (dev certificates); a plaintext connection to their Raft port gets nowhere.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::free_addr;

const BIN: &str = env!("CARGO_BIN_EXE_raft-node");

/// Config files of a 3-node cluster with mutual TLS between peers; the client endpoints.
fn write_configs(dir: &Path) -> (Vec<PathBuf>, Vec<String>) {
    let (files, addrs) = write_configs_with_raft_addrs(dir);
    (files, addrs.iter().map(|(_, c)| c.to_string()).collect())
}

/// Like `write_configs`, returning (raft, client) addresses.
fn write_configs_with_raft_addrs(dir: &Path) -> (Vec<PathBuf>, Vec<(String, String)>) {
    let certs = dir.join("certs");
    raft_tls::generate_dev_certs("bin", 1..=3).unwrap().write_dev_certs(&certs).unwrap();
    let addrs: Vec<_> = (0..3).map(|_| (free_addr(), free_addr())).collect();
    let token_file = dir.join("admin.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let mut members = String::new();
    for (i, (raft, client)) in addrs.iter().enumerate() {
        members.push_str(&format!(
            "[[members]]\nid = {}\nraft_addr = \"{raft}\"\nclient_addr = \"{client}\"\n\n",
            i + 1
        ));
    }
    let mut files = Vec::new();
    for (i, (raft, client)) in addrs.iter().enumerate() {
        let id = i + 1;
        let text = format!(
            "cluster = \"bin\"\nid = {id}\nraft_addr = \"{raft}\"\nclient_addr = \"{client}\"\ndata_dir = \"{}\"\n\n{members}\
             [tls]\nca_cert = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n\n[log]\nlevel = \"info\"\n\n\
             [auth]\ntoken_file = \"{}\"\n\n[[auth.tokens]]\nname = \"test-admin\"\nrole = \"admin\"\nsha256 = \"{}\"\n",
            dir.join(format!("data{id}")).display(),
            certs.join("ca.pem").display(),
            certs.join(format!("node-{id}.pem")).display(),
            certs.join(format!("node-{id}-key.pem")).display(),
            token_file.display(),
            raft_node::hash_token(TOKEN),
        );
        let file = dir.join(format!("node{}.toml", i + 1));
        std::fs::write(&file, text).unwrap();
        files.push(file);
    }
    (files, addrs.iter().map(|(r, c)| (r.to_string(), c.to_string())).collect())
}

/// Starts a node whose log goes to `<config>.log` (appended), as a service manager's would.
fn spawn(config: &Path) -> Child {
    let log =
        std::fs::OpenOptions::new().create(true).append(true).open(config.with_extension("log")).unwrap();
    Command::new(BIN).args(["run", "--config"]).arg(config).stdout(Stdio::null()).stderr(log).spawn().unwrap()
}

/// The admin token of the test clusters (the configs hold its hash).
const TOKEN: &str = "binary-test-admin-token";

fn ctl(endpoints: &[String], args: &[&str]) -> (bool, String, String) {
    ctl_as(Some(TOKEN), endpoints, args)
}

/// `raft-node ctl` presenting `token` (through the environment, as an operator would).
fn ctl_as(token: Option<&str>, endpoints: &[String], args: &[&str]) -> (bool, String, String) {
    let mut command = Command::new(BIN);
    command.args(["ctl", "--endpoints", &endpoints.join(",")]).args(args);
    command.env_remove("RAFT_TOKEN").env_remove("RAFT_TOKEN_FILE");
    if let Some(token) = token {
        command.env("RAFT_TOKEN", token);
    }
    let out = command.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn wait_ready(endpoints: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out, _) = ctl(endpoints, &["--json", "status"]);
        if ok && out.contains("\"leader\":") && !out.contains("\"leader\":null") {
            let (put_ok, _, _) = ctl(endpoints, &["put", "probe", "1"]);
            if put_ok {
                return;
            }
        }
        assert!(Instant::now() < deadline, "the cluster did not become ready");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The node processes of a test, killed when it ends however it ends (a failed assertion
/// must not leave nodes running).
struct Nodes(Vec<Child>);

impl Nodes {
    fn start(files: &[PathBuf]) -> Self {
        Self(files.iter().map(|f| spawn(f)).collect())
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the node did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn three_processes_from_config_files_serve_ctl_and_stop_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let (files, endpoints) = write_configs(dir.path());
    for file in &files {
        let out = Command::new(BIN).args(["check-config", "--config"]).arg(file).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let mut children = Nodes::start(&files);
    wait_ready(&endpoints);

    let (ok, _, err) = ctl(&endpoints, &["put", "color", "blue"]);
    assert!(ok, "{err}");
    // Without a token, or with a wrong one, nothing is served (the open health check is).
    let (ok, _, err) = ctl_as(None, &endpoints, &["get", "color"]);
    assert!(!ok && err.contains("unauthenticated"), "{err}");
    let (ok, _, err) = ctl_as(Some("guess"), &endpoints, &["put", "color", "red"]);
    assert!(!ok && err.contains("unauthenticated"), "{err}");
    let (ok, out, _) = ctl(&endpoints, &["get", "color"]);
    assert!(ok && out.contains("blue"), "{out}");
    let (ok, out, _) = ctl(&endpoints, &["status"]);
    assert!(ok && out.contains("leader"), "{out}");

    // SIGTERM stops every node gracefully (exit 0); a restart keeps the data.
    for child in &mut children.0 {
        let status = terminate(child);
        assert!(status.success(), "exit status {status}");
    }
    let mut children = Nodes::start(&files);
    wait_ready(&endpoints);
    let (ok, out, _) = ctl(&endpoints, &["get", "color"]);
    assert!(ok && out.contains("blue"), "data kept across the restart: {out}");
    for child in &mut children.0 {
        terminate(child);
    }
    // A log written to a file is plain text: no colour escapes.
    for file in &files {
        let log = std::fs::read_to_string(file.with_extension("log")).unwrap();
        assert!(log.contains("INFO"), "the node logged: {log}");
        assert!(!log.contains('\u{1b}'), "ANSI escapes in a log file: {log}");
    }
}

/// The documented way out of a lost majority, as an operator runs it: `recover` says which
/// repairs exist, refuses a running node's data dir, then makes the stopped survivor the only
/// voter; it starts alone (its config still lists three members) and serves its data.
#[test]
fn recover_force_new_cluster_makes_the_stopped_survivor_serve_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (files, endpoints) = write_configs(dir.path());
    let recover = |args: &[&str]| {
        let mut command = Command::new(BIN);
        command.args(["recover", "--config"]).arg(&files[0]).args(args);
        command.output().unwrap()
    };
    let out = recover(&[]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--force-new-cluster") && err.contains("--seed-snapshot"), "{err}");

    let mut children = Nodes::start(&files);
    wait_ready(&endpoints);
    let (ok, _, err) = ctl(&endpoints, &["put", "color", "blue"]);
    assert!(ok, "{err}");
    let out = recover(&["--force-new-cluster"]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success() && err.contains("in use"), "a running node's dir was changed: {err}");
    for child in &mut children.0 {
        terminate(child);
    }
    for id in [2, 3] {
        std::fs::remove_dir_all(dir.path().join(format!("data{id}"))).unwrap();
    }
    let out = recover(&["--force-new-cluster"]);
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("only this node"), "{said}");
    let _alone = Nodes::start(&files[..1]);
    wait_ready(&endpoints[..1]);
    let (ok, out, err) = ctl(&endpoints[..1], &["get", "color"]);
    assert!(ok && out.contains("blue"), "{out} {err}");
}

#[test]
fn a_broken_config_is_refused_with_every_problem_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = dir.path().join("bad.toml");
    let text = format!(
        "cluster = \"x\"\nid = 0\nraft_addr = \"127.0.0.1:1\"\nclient_addr = \"127.0.0.1:1\"\ndata_dir = \"{}\"\n\n[raft]\nheartbeat_interval_ms = 900\n",
        data.display()
    );
    std::fs::write(&file, text).unwrap();
    for sub in ["check-config", "run"] {
        let out = Command::new(BIN).args([sub, "--config"]).arg(&file).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{sub}");
        let err = String::from_utf8_lossy(&out.stderr);
        for key in ["id:", "client_addr:", "members:", "raft:"] {
            assert!(err.contains(key), "{sub}: {key} missing from {err}");
        }
        assert!(err.contains("bad.toml"), "the file is named: {err}");
    }
    assert!(!data.exists(), "the data dir was not created");
    std::fs::write(&file, "cluster = \"x\"\nid = 1\nbogus_key = 3\n").unwrap();
    let out = Command::new(BIN).args(["check-config", "--config"]).arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bogus_key"));
}

#[test]
fn a_refusal_at_start_exits_2_with_its_message_once() {
    let dir = tempfile::tempdir().unwrap();
    let (files, addrs) = write_configs_with_raft_addrs(dir.path());
    let taken = std::net::TcpListener::bind(&addrs[0].0).unwrap();
    let out = Command::new(BIN).args(["run", "--config"]).arg(&files[0]).output().unwrap();
    drop(taken);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.matches("cannot start").count(), 1, "the refusal is printed once: {err}");
    assert!(err.contains(&addrs[0].0), "the taken address is named: {err}");
    assert!(!dir.path().join("data1").exists(), "the data dir was not touched");
}

/// A plaintext peer that says `Hello` as node 2 and then sends a vote request with an absurd
/// term (the forged frames of the security review) to a node of the default set-up: it never
/// gets a `HelloAck`, nothing it sent reaches the protocol, and the cluster keeps serving.
#[test]
fn a_plaintext_peer_gets_nowhere_with_the_default_set_up() {
    use raft_core::wire::{encode_frame, FrameDecoder, WireMessage, DEFAULT_MAX_FRAME_BYTES, WIRE_VERSION};
    use std::io::{Read, Write};

    let dir = tempfile::tempdir().unwrap();
    let (files, addrs) = write_configs_with_raft_addrs(dir.path());
    let endpoints: Vec<String> = addrs.iter().map(|(_, c)| c.clone()).collect();
    let mut children = Nodes::start(&files);
    wait_ready(&endpoints);
    let (_, before, _) = ctl(&endpoints, &["--json", "status"]);
    // The highest term any node reports.
    let term_of = |status: &str| -> u64 {
        let terms: Vec<u64> = status
            .split("\"term\":")
            .skip(1)
            .filter_map(|rest| rest.trim_start().split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
            .collect();
        *terms.iter().max().unwrap_or_else(|| panic!("no term in {status}"))
    };

    let mut frames = Vec::new();
    let hello = WireMessage::Hello { version: WIRE_VERSION, cluster_id: "bin".into(), node_id: 2 };
    encode_frame(&hello, DEFAULT_MAX_FRAME_BYTES, &mut frames).unwrap();
    let vote = WireMessage::Raft(raft_core::Message {
        from: 2,
        to: 1,
        term: u64::MAX - 1,
        payload: raft_core::Payload::RequestVote {
            pre_vote: false,
            last_log_id: raft_core::LogId::new(u64::MAX - 1, u64::MAX - 1),
            leadership_transfer: true,
        },
    });
    encode_frame(&vote, DEFAULT_MAX_FRAME_BYTES, &mut frames).unwrap();
    let mut socket = std::net::TcpStream::connect(&addrs[0].0).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The node may close the connection while we write: that is a refusal too.
    let _ = socket.write_all(&frames);
    let mut answer = Vec::new();
    let _ = socket.read_to_end(&mut answer);
    let mut buf = bytes::BytesMut::from(&answer[..]);
    let decoded = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES).decode(&mut buf);
    assert!(
        !matches!(decoded, Ok(Some(WireMessage::HelloAck { .. }))),
        "a plaintext Hello was accepted: {answer:?}"
    );

    let (ok, _, err) = ctl(&endpoints, &["put", "after", "attack"]);
    assert!(ok, "the cluster still takes writes: {err}");
    let (_, after, _) = ctl(&endpoints, &["--json", "status"]);
    assert!(
        term_of(&after) < 1000,
        "the forged term was not adopted: {} -> {}",
        term_of(&before),
        term_of(&after)
    );
    for child in &mut children.0 {
        terminate(child);
    }
}

/// `raft-node ctl` over HTTPS, trusting `ca`, presenting `token`.
fn ctl_https(ca: &Path, token: &str, endpoints: &[String], args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(["ctl", "--endpoints", &endpoints.join(",")])
        .args(args)
        .env_remove("RAFT_TOKEN_FILE")
        .env("RAFT_TOKEN", token)
        .env("RAFT_CACERT", ca)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn hangup(child: &Child) {
    assert!(Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap().success());
}

#[test]
fn the_api_serves_https_and_sighup_rotates_the_token_and_every_certificate_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (files, endpoints) = write_configs(dir.path());
    let certs = dir.path().join("certs");
    for (i, file) in files.iter().enumerate() {
        let id = i + 1;
        let mut text = std::fs::read_to_string(file).unwrap();
        text = text.replacen(
            "[tls]",
            &format!(
                "[api_tls]\ncert = \"{}\"\nkey = \"{}\"\n\n[tls]",
                certs.join(format!("api-{id}.pem")).display(),
                certs.join(format!("api-{id}-key.pem")).display()
            ),
            1,
        );
        std::fs::write(file, text).unwrap();
    }
    let ca = certs.join("ca.pem");
    let mut children = Nodes::start(&files);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, _, err) = ctl_https(&ca, TOKEN, &endpoints, &["put", "k", "v1"]);
        if ok {
            break;
        }
        let log = std::fs::read_to_string(files[0].with_extension("log")).unwrap_or_default();
        assert!(Instant::now() < deadline, "the HTTPS cluster did not become ready: {err}\n{log}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Plain HTTP gets nowhere (ctl without a CA speaks http).
    let (ok, _, err) = ctl_as(Some(TOKEN), &endpoints, &["get", "k"]);
    assert!(!ok && err.contains("transport"), "plain http was answered: {err}");

    // A broken file on SIGHUP changes nothing and stops nothing.
    let saved: Vec<String> = files.iter().map(|f| std::fs::read_to_string(f).unwrap()).collect();
    std::fs::write(&files[0], saved[0].replace("api-1.pem", "api-missing.pem")).unwrap();
    hangup(&children.0[0]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(matches!(children.0[0].try_wait(), Ok(None)), "a bad reload stopped the node");
    let (ok, out, err) = ctl_https(&ca, TOKEN, &endpoints[..1], &["get", "k"]);
    assert!(ok && out.contains("v1"), "{err}");

    // A new token in every file (and in the nodes' own token file), then SIGHUP.
    const NEW: &str = "binary-test-rotated-admin-token";
    for (file, text) in files.iter().zip(&saved) {
        std::fs::write(file, text.replace(&raft_node::hash_token(TOKEN), &raft_node::hash_token(NEW)))
            .unwrap();
    }
    std::fs::write(dir.path().join("admin.token"), format!("{NEW}\n")).unwrap();
    for child in &children.0 {
        hangup(child);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (old_ok, _, old_err) = ctl_https(&ca, TOKEN, &endpoints, &["get", "k"]);
        let (new_ok, _, _) = ctl_https(&ca, NEW, &endpoints, &["put", "k", "v2"]);
        if !old_ok && old_err.contains("unauthenticated") && new_ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the token was not rotated: old ok={old_ok} ({old_err}), new ok={new_ok}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Every certificate, key and the CA replaced in place by a new CA's, then SIGHUP: the API
    // presents the new certificate, the old CA no longer verifies it, and writes go on.
    let old_ca = dir.path().join("old-ca.pem");
    std::fs::copy(&ca, &old_ca).unwrap();
    raft_tls::generate_dev_certs("bin", 1..=3).unwrap().write_dev_certs(&certs).unwrap();
    for child in &children.0 {
        hangup(child);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (old_ok, _, _) = ctl_https(&old_ca, NEW, &endpoints, &["get", "k"]);
        let (new_ok, out, new_err) = ctl_https(&ca, NEW, &endpoints, &["put", "k", "v3"]);
        if !old_ok && new_ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the certificates were not rotated: old CA ok={old_ok}, new: {out} {new_err}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for child in &mut children.0 {
        assert!(terminate(child).success());
    }
}

#[test]
fn a_sighup_while_the_node_is_still_starting_does_not_kill_it_and_sigterm_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let (files, _) = write_configs(dir.path());
    // Alone, node 1 waits for nodes 2 and 3 to answer before it starts.
    let mut nodes = Nodes::start(&files[..1]);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(matches!(nodes.0[0].try_wait(), Ok(None)), "the node should still be starting");
    hangup(&nodes.0[0]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        matches!(nodes.0[0].try_wait(), Ok(None)),
        "SIGHUP killed a starting node: {:?}",
        nodes.0[0].try_wait()
    );
    assert!(terminate(&mut nodes.0[0]).success(), "SIGTERM stops a starting node cleanly");
}
