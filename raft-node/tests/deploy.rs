//! The deployment files under `deploy/`: the pod entrypoint renders, for every pod of the
//! StatefulSet, a config that `raft-node check-config` accepts; the Kubernetes manifests
//! render with `kubectl kustomize` and validate against the Kubernetes API schemas
//! (`kubernetes-validate`, strict); the systemd unit passes `systemd-analyze verify`.
//!
//! `cargo xtask setup` installs kubectl and kubernetes-validate (`.ci/run` does it). Without
//! them the tests fail and say so; `RAFT_SKIP_DEPLOY_TOOLS=1` leaves those checks out, loudly.

#![allow(clippy::unwrap_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// `program` on PATH, or `None` when the check is to be skipped.
fn tool(program: &str, install: &str) -> Option<PathBuf> {
    if std::env::var_os("RAFT_SKIP_DEPLOY_TOOLS").is_some_and(|v| v == "1") {
        eprintln!("SKIPPED: RAFT_SKIP_DEPLOY_TOOLS=1 leaves the {program} check out");
        return None;
    }
    let found = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(program)).find(|p| p.is_file()));
    assert!(
        found.is_some(),
        "no {program} on PATH: install it (`cargo xtask setup`, or {install}), or set RAFT_SKIP_DEPLOY_TOOLS=1"
    );
    found
}

/// A pod's environment: secrets in `dir`, and a `getent` that resolves names from `dir/hosts`
/// ("name address" lines; pod i of the headless service is 10.1.0.(i+1) at first).
struct Pods {
    dir: tempfile::TempDir,
}

const NAMESPACE: &str = "prod";

fn pod_name(ordinal: u64) -> String {
    format!("raft-node-{ordinal}.raft-node-peers.{NAMESPACE}.svc.cluster.local")
}

impl Pods {
    fn new(replicas: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        std::fs::create_dir_all(&tls).unwrap();
        raft_tls::generate_dev_certs("prod", 1..=replicas).unwrap().write_dev_certs(&tls).unwrap();
        let api_ca = dir.path().join("api-ca");
        std::fs::create_dir_all(&api_ca).unwrap();
        let ca = raft_tls::DevCa::new("api.prod").unwrap();
        std::fs::write(api_ca.join("api-ca.pem"), ca.cert_pem()).unwrap();
        std::fs::write(api_ca.join("api-ca-key.pem"), ca.key_pem()).unwrap();
        let auth = dir.path().join("auth");
        std::fs::create_dir_all(&auth).unwrap();
        let token = "deploy-test-admin-token-0000000000001";
        std::fs::write(auth.join("admin.token"), format!("{token}\n")).unwrap();
        std::fs::write(
            auth.join("tokens.toml"),
            format!(
                // A bare `[auth]` key first: it must land in `[auth]` (found by review: it
                // landed in `[api_tls]` when that came between them).
                "open_ops = false\n\n[[auth.tokens]]\nname = \"admin\"\nrole = \"admin\"\nsha256 = \"{}\"\n",
                raft_node::hash_token(token)
            ),
        )
        .unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let hosts = dir.path().join("hosts");
        let getent = format!(
            "#!/bin/sh\nawk -v n=\"$2\" '$1 == n {{ print $2 \" \" $1; found = 1 }} END {{ exit found ? 0 : 2 }}' {}\n",
            hosts.display()
        );
        std::fs::write(bin.join("getent"), getent).unwrap();
        Command::new("chmod").arg("+x").arg(bin.join("getent")).status().unwrap();
        let pods = Self { dir };
        pods.resolve((0..replicas).map(|i| (i, format!("10.1.0.{}", i + 1))));
        pods
    }

    /// What the resolver answers from now on.
    fn resolve(&self, pods: impl IntoIterator<Item = (u64, String)>) {
        let lines: String = pods.into_iter().map(|(i, ip)| format!("{} {ip}\n", pod_name(i))).collect();
        std::fs::write(self.dir.path().join("hosts"), lines).unwrap();
    }

    fn entrypoint(&self, pod: &str, ip: &str, replicas: u64) -> Command {
        let mut command = Command::new("sh");
        let path = format!("{}:{}", self.dir.path().join("bin").display(), std::env::var("PATH").unwrap());
        let state = self.dir.path().join(format!("state-{pod}"));
        std::fs::create_dir_all(&state).unwrap();
        command
            .arg(repo().join("deploy").join("entrypoint.sh"))
            .arg("render")
            .env_clear()
            .env("PATH", path)
            .env("POD_NAME", pod)
            .env("POD_IP", ip)
            .env("POD_NAMESPACE", NAMESPACE)
            .env("RAFT_REPLICAS", replicas.to_string())
            .env("RAFT_SERVICE", "raft-node-peers")
            .env("RAFT_CLUSTER", "prod")
            .env("STATE_DIR", &state)
            .env("TLS_DIR", self.dir.path().join("tls"))
            .env("AUTH_DIR", self.dir.path().join("auth"))
            .env("API_CA_DIR", self.dir.path().join("api-ca"))
            .env("CONFIG", self.dir.path().join(format!("run-{pod}")).join("node.toml"))
            .env("RAFT_NODE", env!("CARGO_BIN_EXE_raft-node"))
            .env("TMPDIR", self.dir.path())
            .env("EXTRA_CONFIG", repo().join("deploy").join("k8s").join("extra.toml"));
        command
    }

    /// Runs `raft-node check-config` on a rendered config; returns what it said.
    fn check(&self, name: &str, config: &str) -> String {
        let file = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&file, config).unwrap();
        let check = Command::new(env!("CARGO_BIN_EXE_raft-node"))
            .arg("check-config")
            .arg("--config")
            .arg(&file)
            .output()
            .unwrap();
        let said = text(&check);
        assert!(check.status.success(), "{name}'s config is refused: {said}\n{config}");
        // Peers and clients authenticate, and the API serves HTTPS with a certificate the pod
        // issued for its address of the moment: the node has no warning to give.
        let insecure: Vec<&str> = said.lines().filter(|l| l.contains("INSECURE")).collect();
        assert!(insecure.is_empty(), "the rendered config is insecure: {said}");
        said
    }
}

#[test]
fn the_entrypoint_renders_a_config_check_config_accepts_for_every_pod() {
    for replicas in [3, 5] {
        let pods = Pods::new(replicas);
        for ordinal in 0..replicas {
            let ip = format!("10.1.0.{}", ordinal + 1);
            let output = pods.entrypoint(&format!("raft-node-{ordinal}"), &ip, replicas).output().unwrap();
            assert!(output.status.success(), "pod {ordinal}: {}", text(&output));
            let config = String::from_utf8(output.stdout).unwrap();
            let id = ordinal + 1;
            assert!(config.contains(&format!("\nid = {id}\n")), "{config}");
            assert!(config.contains(&format!("raft_addr = \"{ip}:7000\"")), "{config}");
            for member in 1..=replicas {
                assert!(config.contains(&format!("client_addr = \"10.1.0.{member}:8080\"")), "{config}");
            }
            assert!(config.contains(&format!("node-{id}-key.pem")), "{config}");
            assert!(config.contains("[api_tls]"), "{config}");
            // The certificate names the pod's address and its name under the headless service.
            // `render` issues it into a temporary directory, named in the config.
            let cert_path = config
                .lines()
                .find_map(|l| l.strip_prefix("cert = \"").filter(|p| p.ends_with("api.pem\"")))
                .map(|p| p.trim_end_matches('"').to_owned())
                .unwrap();
            let cert = std::fs::read_to_string(&cert_path).unwrap();
            let der = <rustls_pki_types::CertificateDer as rustls_pki_types::pem::PemObject>::from_pem_slice(
                cert.as_bytes(),
            )
            .unwrap();
            let names = raft_tls::certificate_names(&der);
            assert!(names.contains(&pod_name(ordinal)), "{names:?}");
            let said = pods.check(&format!("pod-{ordinal}"), &config);
            assert!(
                said.contains(&format!("ok (node {id} of cluster \"prod\", {replicas} members)")),
                "{said}"
            );
        }
    }
}

/// Secure by default: without the API CA a pod refuses to serve its API in clear, unless told
/// to; an API CA key that is not one refuses too.
#[test]
fn a_pod_without_the_api_ca_refuses_unless_told_to_serve_plain_http() {
    let pods = Pods::new(3);
    std::fs::remove_dir_all(pods.dir.path().join("api-ca")).unwrap();
    let output = pods.entrypoint("raft-node-0", "10.1.0.1", 3).output().unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(text(&output).contains("RAFT_INSECURE_PLAIN_API"), "{}", text(&output));
    let output = pods
        .entrypoint("raft-node-0", "10.1.0.1", 3)
        .env("RAFT_INSECURE_PLAIN_API", "true")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", text(&output));
    assert!(!String::from_utf8_lossy(&output.stdout).contains("[api_tls]"));
    let api_ca = pods.dir.path().join("api-ca");
    std::fs::create_dir_all(&api_ca).unwrap();
    // Half a secret (a misnamed key) is refused even with the override.
    std::fs::write(api_ca.join("api-ca.pem"), "x").unwrap();
    let output = pods
        .entrypoint("raft-node-0", "10.1.0.1", 3)
        .env("RAFT_INSECURE_PLAIN_API", "true")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    std::fs::write(api_ca.join("api-ca-key.pem"), "not a key").unwrap();
    let output = pods.entrypoint("raft-node-0", "10.1.0.1", 3).output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    // The peers' CA put in the API CA's secret: refused (its key must not be in the pods).
    let tls = pods.dir.path().join("tls");
    std::fs::copy(tls.join("ca.pem"), api_ca.join("api-ca.pem")).unwrap();
    std::fs::copy(tls.join("ca-key.pem"), api_ca.join("api-ca-key.pem")).unwrap();
    let output = pods.entrypoint("raft-node-0", "10.1.0.1", 3).output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(text(&output).contains("peers' CA"), "{}", text(&output));
    // Another cluster's API CA: the issued certificate would not chain; refused.
    let other = raft_tls::DevCa::new("api.other").unwrap();
    std::fs::write(api_ca.join("api-ca.pem"), other.cert_pem()).unwrap();
    std::fs::write(api_ca.join("api-ca-key.pem"), other.key_pem()).unwrap();
    let output = pods.entrypoint("raft-node-0", "10.1.0.1", 3).output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
}

#[test]
fn pods_added_to_a_running_cluster_join_it_instead_of_listing_new_members() {
    // Created with 3, grown to 5: pods 0-2 keep listing the 3; pods 3 and 4 join through them.
    let pods = Pods::new(5);
    for ordinal in 0..5 {
        let ip = format!("10.1.0.{}", ordinal + 1);
        let output = pods
            .entrypoint(&format!("raft-node-{ordinal}"), &ip, 5)
            .env("RAFT_INITIAL_REPLICAS", "3")
            .output()
            .unwrap();
        assert!(output.status.success(), "pod {ordinal}: {}", text(&output));
        let config = String::from_utf8(output.stdout).unwrap();
        let said = pods.check(&format!("grown-{ordinal}"), &config);
        if ordinal < 3 {
            assert!(
                said.contains(&format!("ok (node {} of cluster \"prod\", 3 members)", ordinal + 1)),
                "{said}"
            );
            assert!(!config.contains("10.1.0.4"), "{config}");
        } else {
            assert!(said.contains("0 members"), "{said}");
            let join =
                "join = [\"10.1.0.1:8080\", \"10.1.0.2:8080\", \"10.1.0.3:8080\"]\njoin_as_voter = true";
            assert!(config.contains(join), "{config}");
        }
    }
    let output =
        pods.entrypoint("raft-node-0", "10.1.0.1", 3).env("RAFT_INITIAL_REPLICAS", "4").output().unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
}

#[test]
fn the_entrypoint_refuses_a_pod_name_without_ordinal_and_gives_up_on_a_name_that_never_resolves() {
    let pods = Pods::new(3);
    let output = pods.entrypoint("raft-node", "10.1.0.1", 3).output().unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(text(&output).contains("does not end with -<ordinal>"), "{}", text(&output));
    // Four replicas, but the resolver knows three: pod 3's name never resolves.
    let output =
        pods.entrypoint("raft-node-0", "10.1.0.1", 4).env("RESOLVE_TIMEOUT_S", "1").output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(text(&output).contains(&format!("{} did not resolve", pod_name(3))), "{}", text(&output));
}

#[test]
fn a_pod_with_data_uses_a_members_last_address_when_its_name_does_not_resolve() {
    let pods = Pods::new(3);
    // A first start: every name resolves, the addresses are kept on the volume.
    let output = pods.entrypoint("raft-node-0", "10.1.0.1", 3).output().unwrap();
    assert!(output.status.success(), "{}", text(&output));
    // Pod 2 cannot be scheduled now: it has no address, so no name.
    pods.resolve([(1, "10.1.0.2".to_string())]);
    let quick = |command: &mut Command| {
        command.env("RESOLVE_GRACE_S", "1").env("RESOLVE_TIMEOUT_S", "3").output().unwrap()
    };
    // Without data, pod 0 waits for every member (a new cluster needs them all) and gives up.
    let output = quick(&mut pods.entrypoint("raft-node-0", "10.1.0.1", 3));
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    // With data it starts with pod 2's last address after the grace period.
    let data = pods.dir.path().join("state-raft-node-0").join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("CURRENT"), "MANIFEST-000001\n").unwrap();
    let output = quick(&mut pods.entrypoint("raft-node-0", "10.1.0.1", 3));
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("uses the address"), "{}", text(&output));
    let config = String::from_utf8(output.stdout).unwrap();
    assert!(config.contains("client_addr = \"10.1.0.3:8080\""), "{config}");
    pods.check("fallback", &config);
}

/// The rendered manifests as JSON (with PyYAML, which kubernetes-validate brings).
fn as_json(yaml: &str) -> Vec<Value> {
    use std::io::Write;
    let script = "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "python3 with PyYAML: {}", text(&output));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// What keeps manifests that pass the schemas from working together: probes on undeclared
/// ports, selectors that miss the pods, the wrong headless service, root, a mount without
/// volume, replica counts that disagree.
fn manifest_problems(docs: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    let kind = |k: &'static str| docs.iter().filter(move |d| d["kind"] == k);
    let Some(set) = kind("StatefulSet").next() else { return vec!["no StatefulSet".into()] };
    let pod = &set["spec"]["template"];
    let labels = pod["metadata"]["labels"].as_object().cloned().unwrap_or_default();
    let selects_pods = |selector: &Value| {
        selector.as_object().is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| labels.get(k) == Some(v)))
    };
    if !selects_pods(&set["spec"]["selector"]["matchLabels"]) {
        problems.push("the StatefulSet's selector misses its pods".into());
    }
    for pdb in kind("PodDisruptionBudget") {
        if !selects_pods(&pdb["spec"]["selector"]["matchLabels"]) {
            problems.push("the PodDisruptionBudget selects no pod of the set".into());
        }
    }
    let services: Vec<&Value> = kind("Service").collect();
    for service in &services {
        if !selects_pods(&service["spec"]["selector"]) {
            problems.push(format!("service {} selects no pod of the set", service["metadata"]["name"]));
        }
    }
    let headless = services.iter().find(|s| s["spec"]["clusterIP"] == "None");
    let headless_name = headless.map(|s| s["metadata"]["name"].clone()).unwrap_or(Value::Null);
    if headless.is_none() || set["spec"]["serviceName"] != headless_name {
        problems.push("serviceName is not the headless service".into());
    }
    if headless.is_some_and(|s| s["spec"]["publishNotReadyAddresses"] != true) {
        problems.push("the headless service hides pods that are not ready: a new cluster never forms".into());
    }
    let spec = &pod["spec"];
    if spec["securityContext"]["runAsUser"] != 10001 || spec["securityContext"]["runAsNonRoot"] != true {
        problems.push("the pods do not run as the image's user 10001, non-root".into());
    }
    if spec["terminationGracePeriodSeconds"].as_u64().unwrap_or(30) < 30 {
        problems.push("a grace period too short for the leadership hand-off".into());
    }
    let container = &spec["containers"][0];
    let env = |name: &str| {
        container["env"]
            .as_array()
            .and_then(|e| e.iter().find(|v| v["name"] == name))
            .map(|v| v["value"].clone())
    };
    if env("RAFT_SERVICE") != Some(headless_name.clone()) {
        problems.push("RAFT_SERVICE is not the headless service".into());
    }
    let replicas = set["spec"]["replicas"].as_u64().unwrap_or(1);
    let number = |v: Option<Value>| v.and_then(|v| v.as_str().and_then(|s| s.parse::<u64>().ok()));
    if number(env("RAFT_REPLICAS")) != Some(replicas) {
        problems.push("RAFT_REPLICAS differs from replicas".into());
    }
    if number(env("RAFT_INITIAL_REPLICAS")).is_none_or(|n| n > replicas || n == 0) {
        problems.push("RAFT_INITIAL_REPLICAS is not between 1 and replicas".into());
    }
    let ports: Vec<&Value> =
        container["ports"].as_array().map(|p| p.iter().map(|p| &p["name"]).collect()).unwrap_or_default();
    for (probe, path) in
        [("startupProbe", "/health"), ("livenessProbe", "/health"), ("readinessProbe", "/ready")]
    {
        let get = &container[probe]["httpGet"];
        if get["path"] != path || !ports.contains(&&get["port"]) {
            problems.push(format!("{probe} is not GET {path} on a declared port"));
        }
    }
    let mut volumes: Vec<&Value> =
        spec["volumes"].as_array().map(|v| v.iter().map(|v| &v["name"]).collect()).unwrap_or_default();
    if let Some(claims) = set["spec"]["volumeClaimTemplates"].as_array() {
        volumes.extend(claims.iter().map(|c| &c["metadata"]["name"]));
    }
    for mount in container["volumeMounts"].as_array().into_iter().flatten() {
        if !volumes.contains(&&mount["name"]) {
            problems.push(format!("the mount {} has no volume", mount["name"]));
        }
    }
    for volume in spec["volumes"].as_array().into_iter().flatten() {
        let map = &volume["configMap"]["name"];
        if !map.is_null() && !kind("ConfigMap").any(|c| &c["metadata"]["name"] == map) {
            problems.push(format!("the volume {} names no ConfigMap of the set", volume["name"]));
        }
    }
    problems
}

#[test]
fn the_kubernetes_manifests_render_and_validate_strictly() {
    let Some(kubectl) = tool("kubectl", "`apt-get install kubernetes-client`") else { return };
    let Some(validate) = tool("kubernetes-validate", "`pip install kubernetes-validate`") else { return };
    let rendered =
        Command::new(kubectl).arg("kustomize").arg(repo().join("deploy").join("k8s")).output().unwrap();
    assert!(rendered.status.success(), "kubectl kustomize: {}", text(&rendered));
    let yaml = String::from_utf8(rendered.stdout).unwrap();
    for kind in ["kind: StatefulSet", "kind: PodDisruptionBudget", "kind: ConfigMap", "clusterIP: None"] {
        assert!(yaml.contains(kind), "{kind} missing:\n{yaml}");
    }
    let docs = as_json(&yaml);
    assert_eq!(manifest_problems(&docs), Vec::<String>::new(), "{yaml}");
    // The checks catch manifests that validate but cannot work.
    type Breakage = (&'static str, fn(&mut Value));
    let breakages: [Breakage; 5] = [
        ("a probe on an undeclared port", |d| {
            d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = "htp".into()
        }),
        ("root", |d| d["spec"]["template"]["spec"]["securityContext"]["runAsUser"] = 0.into()),
        ("another service name", |d| d["spec"]["serviceName"] = "raft-node-peerz".into()),
        ("a mount without volume", |d| {
            d["spec"]["template"]["spec"]["volumes"].as_array_mut().unwrap().retain(|v| v["name"] != "tls")
        }),
        ("selecting other pods", |d| d["spec"]["selector"]["matchLabels"]["app"] = "raft-nodes".into()),
    ];
    for (what, breakage) in breakages {
        let mut broken = docs.clone();
        let set = broken.iter_mut().find(|d| d["kind"] == "StatefulSet").unwrap();
        breakage(set);
        assert!(!manifest_problems(&broken).is_empty(), "{what} went unnoticed");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let checked = Command::new(validate).args(["--strict", "-k", "1.31.0"]).arg(&file).output().unwrap();
    let said = text(&checked);
    assert!(checked.status.success(), "kubernetes-validate: {said}");
    assert_eq!(said.matches(" passed for resource ").count(), 5, "{said}");
}

#[test]
fn the_systemd_unit_verifies_and_does_not_restart_after_a_refusal() {
    let unit =
        std::fs::read_to_string(repo().join("deploy").join("systemd").join("raft-node.service")).unwrap();
    assert!(unit.contains("\nRestartPreventExitStatus=2\n"), "{unit}");
    assert!(unit.contains("\nKillSignal=SIGTERM\n"), "{unit}");
    let Some(analyze) = tool("systemd-analyze", "`apt-get install systemd`") else { return };
    // Verified with the binary it would run (the unit names /usr/local/bin/raft-node).
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("raft-node.service");
    std::fs::write(&file, unit.replace("/usr/local/bin/raft-node", env!("CARGO_BIN_EXE_raft-node"))).unwrap();
    let verified = Command::new(analyze).arg("verify").arg(&file).output().unwrap();
    let said = text(&verified);
    // It exits 0 on unknown keys and bad values: anything it says is a finding.
    let findings: Vec<&str> = said.lines().filter(|l| l.contains("raft-node.service")).collect();
    assert!(verified.status.success() && findings.is_empty(), "systemd-analyze verify: {said}");
}
