//! The `raft-node` binary: `run` a node from a config file, `check-config`, `recover` (offline
//! repair), `new-token`, or `ctl` (the operator CLI, the same as `raftctl`).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use raft_node::config::{LogFormat, NodeConfig};
use raft_node::Node;

/// jemalloc, for the Rust side and (its `malloc` unprefixed) for RocksDB's C++ too. With
/// glibc's allocator a node's resident memory after a million writes was about twice the
/// heap it used (per-thread arenas keep what the large snapshot buffers freed); jemalloc's
/// background threads return it (figures in the README's Benchmarks section).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser)]
#[command(name = "raft-node", version, about = "A replicated key-value and service-registry server on Raft")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Starts a node from a config file; SIGINT or SIGTERM stop it gracefully.
    Run {
        /// The TOML config file (see raft-node/node.example.toml).
        #[arg(long, short)]
        config: PathBuf,
        /// Overrides one key: `--set raft.heartbeat_interval_ms=30` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Validates a config file and prints every problem; starts nothing.
    CheckConfig {
        /// The TOML config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Overrides one key (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Offline repair of a stopped node's data dir, for what the cluster cannot repair by
    /// itself (no member holds the data any more). Say which, exactly one of:
    /// `--accept-data-loss`, `--force-new-cluster`, `--seed-snapshot FILE`.
    #[command(group(clap::ArgGroup::new("repair").required(true).args(["accept_data_loss", "force_new_cluster", "seed_snapshot"])))]
    Recover {
        /// The node's TOML config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Overrides one key (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// The store lost entries it had made durable (a cut or deleted write-ahead log) and
        /// no member holds them any more (a one-node cluster, or every replica damaged at
        /// once): accept the loss, so that the node votes and campaigns with the log it has.
        /// While a member still holds the entries, do not: the node recovers them by itself.
        #[arg(long)]
        accept_data_loss: bool,
        /// A majority of the voters is gone for good: make this node, the most up-to-date
        /// survivor, the only voter, keeping every entry it holds. Then start it and add the
        /// others back with empty data dirs (`join`); never start a removed member on its old
        /// data dir.
        #[arg(long)]
        force_new_cluster: bool,
        /// Every member is gone: start a new one-voter cluster from this snapshot backup
        /// (`raftctl snapshot-save`), in an empty data dir.
        #[arg(long, value_name = "FILE")]
        seed_snapshot: Option<PathBuf>,
    },
    /// Issues this node's client-API (HTTPS) certificate for the names it is reached by, from
    /// an API CA made by `cargo xtask certs --api-ca` (its key: keep it only where nodes
    /// issue their own certificates, e.g. in the pods of a StatefulSet whose addresses change
    /// at each start; it cannot issue peer certificates). Writes `--cert` and `--key` (0600).
    IssueApiCert {
        /// The cluster id (the API CA is the one of `api.<cluster>`).
        #[arg(long)]
        cluster: String,
        /// The API CA's private key (`api-ca-key.pem`).
        #[arg(long, value_name = "FILE")]
        ca_key: PathBuf,
        /// The API CA's certificate (`api-ca.pem`, or a bundle during a rotation): the issued
        /// certificate must chain to it.
        #[arg(long, value_name = "FILE")]
        ca_cert: PathBuf,
        /// The peers' CA (`[tls].ca_cert`): refused as the API CA (its key must not be in the
        /// pods).
        #[arg(long, value_name = "FILE")]
        peer_ca: Option<PathBuf>,
        /// A name the node is reached by: an IP address or a DNS name (repeatable).
        #[arg(long = "name", value_name = "NAME", required = true)]
        names: Vec<String>,
        /// Where to write the certificate (PEM).
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
        /// Where to write its private key (PEM, mode 0600).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
    /// Prints a new random client token and the `[[auth.tokens]]` entry (its SHA-256) that
    /// lets a node accept it.
    NewToken {
        /// The token's name in the config and in the logs.
        #[arg(long, default_value = "admin")]
        name: String,
        /// What it may do: read, write or admin.
        #[arg(long, default_value = "admin")]
        role: String,
    },
    /// The operator CLI (`raft-node ctl --help`): status, put, get, members, ...
    #[command(disable_help_flag = true)]
    Ctl {
        /// Arguments of the CLI.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::NewToken { name, role } => {
            if !matches!(role.as_str(), "read" | "write" | "admin") {
                eprintln!("error: --role must be read, write or admin");
                return ExitCode::from(2);
            }
            match raft_node::new_token() {
                Ok(token) => {
                    println!("# The token (give it to the client; it is not stored anywhere):");
                    println!("# {token}");
                    println!("# The entry for each node's config (only the hash):");
                    println!(
                        "[[auth.tokens]]\nname = {name:?}\nrole = \"{role}\"\nsha256 = \"{}\"",
                        raft_node::hash_token(&token)
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Recover { config, overrides, accept_data_loss, force_new_cluster, seed_snapshot } => {
            let config = match NodeConfig::load(&config, &overrides) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let outcome = runtime.block_on(async {
                use raft_node::recover;
                if let Some(file) = &seed_snapshot {
                    recover::seed_from_snapshot(&config, file).await.map(|s| s.to_string())
                } else if force_new_cluster {
                    recover::force_new_cluster(&config).await.map(|f| f.to_string())
                } else {
                    debug_assert!(accept_data_loss, "clap requires one repair");
                    recover::accept_data_loss(&config).await.map(|lost| match lost {
                        Some(lost) => {
                            format!("accepted: {lost}. The node now votes and campaigns with the log it has.")
                        }
                        None => "nothing was lost; nothing changed".to_owned(),
                    })
                }
            });
            match outcome {
                Ok(message) => {
                    println!("node {}: {message}", config.id);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: node {}: {e}", config.id);
                    ExitCode::FAILURE
                }
            }
        }
        Command::IssueApiCert { cluster, ca_key, ca_cert, peer_ca, names, cert, key } => {
            let files = ApiCertFiles { ca_key, ca_cert, peer_ca, cert, key };
            match issue_api_cert(&cluster, &files, &names) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Ctl { args } => {
            let args = std::iter::once(OsString::from("raft-node ctl")).chain(args);
            match runtime.block_on(raft_client::cli::run(args)) {
                Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig { config, overrides } => match NodeConfig::load(&config, &overrides) {
            Ok(c) => {
                println!(
                    "{}: ok (node {} of cluster {:?}, {} members)",
                    config.display(),
                    c.id,
                    c.cluster,
                    c.members.len()
                );
                for warning in c.warnings() {
                    println!("warning: INSECURE: {warning}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Run { config, overrides } => {
            let config_path = config;
            let config = match NodeConfig::load(&config_path, &overrides) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(&config);
            let id = config.id;
            // Before the start, which can wait long for the other members: a SIGHUP meanwhile
            // (a fleet-wide rotation) must not kill the node with the default action.
            let signals = match runtime.block_on(async { Signals::install() }) {
                Ok(signals) => signals,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::FAILURE;
                }
            };
            // A refusal at start (a taken port, a read-only or foreign data dir, a member that
            // lost its data) exits 2 with its message once, as an invalid config does.
            // SIGTERM or SIGINT while it starts (it may wait for the other members) stops it.
            let mut signals = signals;
            let started = runtime.block_on(async {
                tokio::select! {
                    started = Node::start(config) => Some(started),
                    _ = signals.term.recv() => None,
                    _ = tokio::signal::ctrl_c() => None,
                }
            });
            let node = match started {
                Some(Ok(node)) => node,
                Some(Err(e)) => {
                    eprintln!("error: node {id} cannot start: {e}");
                    // A failing or full disk may come back: the supervisor tries again (1).
                    return if e.is_transient() { ExitCode::FAILURE } else { ExitCode::from(2) };
                }
                None => {
                    eprintln!("node {id}: stopped while starting");
                    return ExitCode::SUCCESS;
                }
            };
            match runtime.block_on(serve(node, signals, &config_path, &overrides)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_logging(config: &NodeConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: a log file or a log shipper gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The files `issue-api-cert` reads and writes.
struct ApiCertFiles {
    ca_key: PathBuf,
    ca_cert: PathBuf,
    peer_ca: Option<PathBuf>,
    cert: PathBuf,
    key: PathBuf,
}

/// `issue-api-cert`: an API certificate for `names` from the API CA of `api.<cluster>`,
/// checked to chain to the API CA's certificate before anything is written.
fn issue_api_cert(cluster: &str, files: &ApiCertFiles, names: &[String]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let read = |path: &PathBuf, what: &str| {
        std::fs::read_to_string(path).with_context(|| format!("reading the {what} {}", path.display()))
    };
    if let Some(bad) =
        names.iter().find(|n| n.is_empty() || n.contains('*') || n.contains(char::is_whitespace))
    {
        anyhow::bail!("--name {bad:?}: a name is an IP address or a DNS name (no wildcard)");
    }
    let ca_cert_pem = read(&files.ca_cert, "API CA certificate")?;
    if let Some(peer_ca) = &files.peer_ca {
        if read(peer_ca, "peers' CA certificate")?.trim() == ca_cert_pem.trim() {
            anyhow::bail!(
                "the API CA is the peers' CA ({}): its key would let a pod issue peer certificates; make a CA of its own (cargo xtask certs --api-ca-only)",
                peer_ca.display()
            );
        }
    }
    let ca = raft_tls::DevCa::from_key_pem(&format!("api.{cluster}"), &read(&files.ca_key, "API CA key")?)
        .with_context(|| format!("using the API CA key {}", files.ca_key.display()))?;
    let (cert_pem, key_pem) = ca.issue_server(names).context("issuing the certificate")?;
    let tls = raft_tls::ApiServerTls {
        cert_pem: cert_pem.clone(),
        key_pem: key_pem.clone(),
        client_ca_pem: None,
        require_client_cert: false,
    };
    raft_tls::check_api_certificate(&tls, &ca_cert_pem).with_context(|| {
        format!(
            "the key {} is not the one of {} for cluster {cluster:?} (another CA, or another --cluster)",
            files.ca_key.display(),
            files.ca_cert.display()
        )
    })?;
    // The key is written to a new file of mode 0600 (replacing an older one).
    let _ = std::fs::remove_file(&files.key);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&files.key)
        .with_context(|| format!("creating {}", files.key.display()))?;
    file.write_all(key_pem.as_bytes()).with_context(|| format!("writing {}", files.key.display()))?;
    std::fs::write(&files.cert, cert_pem).with_context(|| format!("writing {}", files.cert.display()))?;
    Ok(())
}

/// The signals a running node answers.
struct Signals {
    term: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers (from then on SIGTERM and SIGHUP are queued, not fatal).
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            hangup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
        })
    }
}

/// The longest the shutdown after a fatal error may take before the process exits anyway.
const FATAL_SHUTDOWN_MAX: std::time::Duration = std::time::Duration::from_secs(15);

/// Serves until SIGINT or SIGTERM, then shuts the node down. SIGHUP reloads the credentials
/// from the config file (see [`Node::reload`]); one received while the node started is
/// handled once it runs. When Raft stops on a fatal error (a failed fsync: what the disk holds
/// is unknown until the store is opened again), the node shuts down and the process exits 1,
/// so that its supervisor (systemd's `Restart=on-failure`, Kubernetes) starts it again on
/// what is really on disk; a refusal at that start exits 2 and is not restarted.
async fn serve(
    node: Node,
    mut signals: Signals,
    path: &std::path::Path,
    overrides: &[String],
) -> anyhow::Result<()> {
    // Not the status watch: it changes with every step, and this would wake the main thread
    // for each (a wake-up per step for nothing, seen in a busy leader's context switches).
    let mut fatal_watch = node.raft().watch_fatal();
    let stopped = async move {
        match fatal_watch.wait_for(Option::is_some).await {
            Ok(why) => why.clone().unwrap_or_default(),
            // The driver is gone without saying why: treated the same.
            Err(_) => "the Raft driver ended".to_owned(),
        }
    };
    tokio::pin!(stopped);
    let mut fatal = None;
    loop {
        tokio::select! {
            r = tokio::signal::ctrl_c() => { r.context("waiting for SIGINT")?; break; }
            _ = signals.term.recv() => break,
            _ = signals.hangup.recv() => reload(&node, path, overrides),
            why = &mut stopped => {
                tracing::error!(error = %why, "Raft stopped on a fatal error: shutting down so that the node is started again on what the disk holds");
                // The shutdown flushes the store, which may block on the disk that just failed
                // (found by review: hung in fdatasync, HTTP already down): the process exits 1
                // after a bound whatever happens.
                std::thread::spawn(|| {
                    std::thread::sleep(FATAL_SHUTDOWN_MAX);
                    eprintln!("error: the shutdown after a fatal error did not end within {FATAL_SHUTDOWN_MAX:?}; exiting");
                    std::process::exit(1);
                });
                fatal = Some(why);
                break;
            }
        }
    }
    tracing::info!("shutting down");
    node.shutdown().await;
    match fatal {
        Some(why) => Err(anyhow::anyhow!("Raft stopped: {why}")),
        None => Ok(()),
    }
}

/// SIGHUP: reads the config file again and reloads the credentials; a bad file is logged and
/// changes nothing.
fn reload(node: &Node, path: &std::path::Path, overrides: &[String]) {
    let outcome = NodeConfig::load(path, overrides)
        .map_err(|e| e.to_string())
        .and_then(|config| node.reload(&config).map_err(|e| e.to_string()));
    match outcome {
        Ok(done) => {
            tracing::info!(applied = ?done.applied, "SIGHUP: credentials reloaded");
            if !done.needs_restart.is_empty() {
                tracing::warn!(keys = ?done.needs_restart, "SIGHUP: these keys changed and take effect at the next start");
            }
        }
        Err(e) => tracing::error!(error = %e, "SIGHUP: reload refused; the node keeps its credentials"),
    }
}
