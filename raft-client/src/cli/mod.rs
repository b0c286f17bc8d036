//! `raftctl`, the command line of a `raft-node` cluster, as a library so that other binaries
//! can offer it too (`raft-node ctl ...` calls [`run`] with its own arguments).
//!
//! Output is an aligned table by default and the API's JSON with `--json`. A failed call
//! prints `error: <code>: <message>` on stderr (for `cas_failed`, the key's current state)
//! and exits with 1; a command line that does not parse exits with 2.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let code = raft_client::cli::run(["raftctl", "--endpoints", "127.0.0.1:8081", "get", "k"]).await?;
//! std::process::exit(code);
//! # }
//! ```

mod args;
pub mod render;
pub mod table;

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::Path;

use anyhow::Context;
use clap::Parser;
use futures_util::StreamExt;
use serde::Serialize;

pub use args::{
    parse_duration, parse_service_node, CasArgs, Cli, Command, ConsistencyArg, MembersCommand, RegisterArgs,
    ServicesCommand, StrategyArg, DEFAULT_ENDPOINTS, TIMEOUT_MAX,
};

use crate::api::{AddMemberRequest, CasRequest, MemberRole, ServiceSpec};
use crate::{Client, ClientError, ClientOptions};

/// Largest `--file` accepted by `services register`, in bytes.
pub const SPEC_FILE_BYTES_MAX: u64 = 16 << 20;

/// Exit code of a failed call.
pub const EXIT_FAILURE: i32 = 1;
/// Exit code of a command line that does not parse.
pub const EXIT_USAGE: i32 = 2;

/// Parses `args` (the first one is the program name, as in `std::env::args_os()`), runs the
/// command against the cluster, prints to stdout and stderr, and returns the exit code.
///
/// `Err` is left for failures outside the cluster (writing the output, reading `--file`).
pub async fn run<I, T>(args: I) -> anyhow::Result<i32>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            e.print().context("printing the usage")?;
            return Ok(e.exit_code());
        }
    };
    execute(&cli, &mut std::io::stdout(), &mut std::io::stderr()).await
}

/// Runs a parsed command, writing its output to `out` and errors to `err`; returns the exit
/// code.
pub async fn execute(
    cli: &Cli,
    out: &mut (dyn Write + Send),
    err: &mut (dyn Write + Send),
) -> anyhow::Result<i32> {
    let token = match token_of(cli) {
        Ok(token) => token,
        Err(message) => {
            writeln!(err, "error: {message}")?;
            return Ok(EXIT_USAGE);
        }
    };
    let tls = match tls_of(cli) {
        Ok(tls) => tls,
        Err(message) => {
            writeln!(err, "error: {message}")?;
            return Ok(EXIT_USAGE);
        }
    };
    if let (Some(_), None, false) = (&token, &tls, cli.insecure_plain_http) {
        if let Some(remote) = cli.endpoints.iter().find(|e| !is_loopback_endpoint(e)) {
            writeln!(
                err,
                "error: the token would cross the network in clear to {remote}: use https (--cacert), \
                 or --insecure-plain-http on a network you trust"
            )?;
            return Ok(EXIT_USAGE);
        }
    }
    let options = ClientOptions { request_timeout: cli.timeout, token, tls, ..ClientOptions::default() };
    let client = match Client::new(&cli.endpoints, options) {
        Ok(client) => client,
        Err(e) => return report(err, &e),
    };
    match dispatch(cli, &client, out, err).await? {
        Ok(code) => Ok(code),
        Err(e) => report(err, &e),
    }
}

/// Where `cargo xtask cluster up` writes the local cluster's admin token, relative to the
/// directory `raftctl` runs in.
pub const LOCAL_CLUSTER_TOKEN_FILE: &str = "target/cluster/admin.token";

/// The token to present: `--token`/`RAFT_TOKEN`, else the file of `--token-file`/
/// `RAFT_TOKEN_FILE`, else the local cluster's token file when it exists.
fn token_of(cli: &Cli) -> Result<Option<String>, String> {
    if let Some(token) = &cli.token {
        return Ok(Some(token.trim().to_owned()));
    }
    let (path, explicit) = match &cli.token_file {
        Some(path) => (path.clone(), true),
        // The local cluster's token only goes to local endpoints.
        None if cli.endpoints.iter().all(|e| is_loopback_endpoint(e)) => {
            (std::path::PathBuf::from(LOCAL_CLUSTER_TOKEN_FILE), false)
        }
        None => return Ok(None),
    };
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => Ok(Some(text.trim().to_owned())),
        Ok(_) if explicit => Err(format!("the token file {} is empty", path.display())),
        Err(e) if explicit => Err(format!("cannot read the token file {}: {e}", path.display())),
        _ => Ok(None),
    }
}

/// The local cluster's API CA (written by `cargo xtask cluster up` for an HTTPS cluster),
/// relative to the working directory.
pub const LOCAL_CLUSTER_CA_FILE: &str = "target/cluster/api-ca.pem";

/// The TLS of the command: `--cacert` (with `--cert`/`--key`), else the local cluster's CA for
/// loopback endpoints that name no scheme, else none (plain HTTP).
fn tls_of(cli: &Cli) -> Result<Option<crate::ClientTls>, String> {
    let identity = cli.client_cert.as_deref().zip(cli.client_key.as_deref());
    if let Some(ca) = &cli.cacert {
        return crate::ClientTls::from_files(ca, identity).map(Some);
    }
    let local = Path::new(LOCAL_CLUSTER_CA_FILE);
    let bare_local = cli.endpoints.iter().all(|e| !e.contains("://") && is_loopback_endpoint(e));
    if bare_local && local.exists() {
        return crate::ClientTls::from_files(local, identity).map(Some);
    }
    if identity.is_some() {
        return Err("--cert and --key need --cacert (the CA of the nodes' API certificates)".into());
    }
    let https = cli.endpoints.iter().any(|e| e.trim_start().to_ascii_lowercase().starts_with("https://"));
    if https {
        return Err("an https endpoint needs --cacert (the CA of the nodes' API certificates)".into());
    }
    Ok(None)
}

/// Whether `endpoint` parses and names this machine's loopback.
fn is_loopback_endpoint(endpoint: &str) -> bool {
    crate::Endpoint::parse(endpoint).is_ok_and(|e| e.is_loopback())
}

/// The `<code>: <message>` of an error, as printed after `error: `.
pub fn error_line(e: &ClientError) -> String {
    match e {
        ClientError::Api { error, .. } => format!("{}: {}", e.code(), error.message),
        ClientError::CasFailed { current: None } => "cas_failed: the key is absent".to_owned(),
        ClientError::CasFailed { current: Some(kv) } => format!(
            "cas_failed: the key is at version {} (modified at index {}) with value {:?}",
            kv.version, kv.mod_index, kv.value
        ),
        ClientError::RetriesExhausted { attempts, last } => {
            format!("{} (gave up after {attempts} attempts)", error_line(last))
        }
        ClientError::Transport { endpoint, source } => {
            format!("transport: cannot reach {endpoint}: {}", innermost_cause(source))
        }
        other => format!("{}: {other}", other.code()),
    }
}

/// The innermost cause of an error: it says what happened ("Connection refused"), the outer
/// ones mostly repeat the URL.
fn innermost_cause<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> &'a (dyn std::error::Error + 'static) {
    let mut cause = error;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause
}

fn report(err: &mut (dyn Write + Send), e: &ClientError) -> anyhow::Result<i32> {
    writeln!(err, "error: {}", error_line(e)).context("writing to stderr")?;
    if e.code() == "unauthenticated" {
        writeln!(
            err,
            "hint: give a token with --token-file FILE, RAFT_TOKEN_FILE or RAFT_TOKEN (a cluster from \
             `cargo xtask cluster up` keeps its admin token in {LOCAL_CLUSTER_TOKEN_FILE})"
        )
        .context("writing to stderr")?;
    }
    Ok(EXIT_FAILURE)
}

/// Runs the command: the outer `Result` for local failures, the inner one for the cluster's.
async fn dispatch(
    cli: &Cli,
    client: &Client,
    out: &mut (dyn Write + Send),
    err: &mut (dyn Write + Send),
) -> anyhow::Result<Result<i32, ClientError>> {
    let json = cli.json;
    macro_rules! show {
        ($call:expr, $render:path) => {
            match $call.await {
                Ok(value) => {
                    print(out, json, &value, $render)?;
                    Ok(0)
                }
                Err(e) => Err(e),
            }
        };
    }
    let result = match &cli.command {
        Command::Status => {
            let rows = client.statuses().await;
            if json {
                let values: Vec<serde_json::Value> = rows
                    .iter()
                    .map(|(endpoint, status)| match status {
                        Ok(s) => serde_json::json!({ "endpoint": endpoint.to_string(), "status": s }),
                        Err(e) => serde_json::json!({
                            "endpoint": endpoint.to_string(),
                            "error": { "code": e.code(), "message": e.to_string() },
                        }),
                    })
                    .collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&values)?)?;
            } else {
                out.write_all(render::statuses(&rows).as_bytes())?;
            }
            if rows.iter().all(|(_, s)| s.is_err()) {
                Ok(EXIT_FAILURE)
            } else {
                Ok(0)
            }
        }
        Command::Leader => show!(client.leader(), render::leader),
        Command::Put { key, value } => show!(client.put(key, value), render::write_result),
        Command::Get { key, consistency } => match client.get(key, consistency.map(Into::into)).await {
            Ok(Some(kv)) => {
                print(out, json, &kv, render::key_value)?;
                Ok(0)
            }
            Ok(None) => {
                writeln!(err, "error: not_found: key {key:?} does not exist")?;
                Ok(EXIT_FAILURE)
            }
            Err(e) => Err(e),
        },
        Command::Del { key } => show!(client.delete(key), render::write_result),
        Command::Cas(args) => show!(client.cas(&args.key, &cas_request(args)), render::write_result),
        Command::List { prefix, limit, after, consistency } => {
            let prefix = prefix.as_deref().unwrap_or("");
            let consistency = consistency.map(Into::into);
            let listed = match after {
                Some(after) => client.list_after(prefix, after, *limit, consistency).await,
                None => client.list(prefix, *limit, consistency).await,
            };
            match listed {
                Ok(list) => {
                    print(out, json, &list, render::key_list)?;
                    match &list.next_start_after {
                        Some(next) if !json => {
                            // Quoted for a POSIX shell: pasted, it names exactly this key.
                            let quoted = format!("'{}'", next.replace('\'', "'\\''"));
                            writeln!(err, "(more keys match; the next page: --after {quoted})")?
                        }
                        _ if list.truncated && !json => writeln!(err, "(more keys match; raise --limit)")?,
                        _ => {}
                    }
                    Ok(0)
                }
                Err(e) => Err(e),
            }
        }
        Command::Log { from, limit } => show!(client.log(*from, *limit), render::log),
        Command::Members { command } => match command.as_ref().unwrap_or(&MembersCommand::List) {
            MembersCommand::List => show!(client.members(), render::members),
            MembersCommand::Add { id, raft_addr, client_addr, voter } => {
                let request = AddMemberRequest {
                    id: *id,
                    raft_addr: raft_addr.clone(),
                    client_addr: client_addr.clone(),
                    role: if *voter { MemberRole::Voter } else { MemberRole::Learner },
                };
                show!(client.add_member(&request), render::members)
            }
            MembersCommand::Promote { id, force } => {
                show!(client.promote_member(*id, *force), render::members)
            }
            MembersCommand::Remove { id, force } => show!(client.remove_member(*id, *force), render::members),
        },
        Command::TransferLeader { id } => show!(client.transfer_leader(*id), render::leader),
        Command::Services { command } => match command {
            ServicesCommand::List => show!(client.services(), render::services),
            ServicesCommand::Get { name } => match client.service(name).await {
                Ok(Some(service)) => {
                    print(out, json, &service, render::service)?;
                    Ok(0)
                }
                Ok(None) => {
                    writeln!(err, "error: not_found: service {name:?} is not registered")?;
                    Ok(EXIT_FAILURE)
                }
                Err(e) => Err(e),
            },
            ServicesCommand::Register(args) => {
                let spec = service_spec(args)?;
                show!(client.register_service(&args.name, &spec), render::write_result)
            }
            ServicesCommand::Remove { name } => show!(client.remove_service(name), render::write_result),
            ServicesCommand::Down { name, node } => {
                show!(client.set_service_node_down(name, node, true), render::write_result)
            }
            ServicesCommand::Up { name, node } => {
                show!(client.set_service_node_down(name, node, false), render::write_result)
            }
        },
        Command::Balance { name, strategy } => {
            show!(client.balance(name, (*strategy).into()), render::balance)
        }
        Command::Watch { prefix, from_index } => {
            return watch(client, prefix.as_deref().unwrap_or(""), *from_index, json, out, err).await;
        }
        Command::SnapshotSave { file } => return save_snapshot(client, file, json, out).await,
    };
    Ok(result)
}

/// A temporary file removed when dropped, unless [`kept`](TempFile::keep) (renamed into place).
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn keep(mut self) {
        self.0 = std::path::PathBuf::new();
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.0.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// Downloads the snapshot to a temporary file beside `file`, syncs it and renames it into
/// place: `file` is a whole snapshot or untouched.
async fn save_snapshot(
    client: &Client,
    file: &std::path::Path,
    json: bool,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<Result<i32, ClientError>> {
    use anyhow::Context as _;
    let mut download = match client.snapshot().await {
        Ok(d) => d,
        Err(e) => return Ok(Err(e)),
    };
    // A name of this process's own (two saves to one file do not mix), removed on any failure.
    let mut tmp = file.as_os_str().to_owned();
    tmp.push(format!(".part-{}", std::process::id()));
    let tmp = TempFile(std::path::PathBuf::from(tmp));
    let created = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp.0);
    let mut writer =
        std::io::BufWriter::new(created.with_context(|| format!("creating {}", tmp.0.display()))?);
    loop {
        match download.next_chunk().await {
            Ok(Some(chunk)) => {
                writer.write_all(&chunk).with_context(|| format!("writing {}", tmp.0.display()))?
            }
            Ok(None) => break,
            Err(e) => return Ok(Err(e)),
        }
    }
    let written = writer.into_inner().map_err(|e| e.into_error()).context("flushing the snapshot")?;
    written.sync_all().with_context(|| format!("syncing {}", tmp.0.display()))?;
    std::fs::rename(&tmp.0, file)
        .with_context(|| format!("renaming {} to {}", tmp.0.display(), file.display()))?;
    tmp.keep();
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))?;
    }
    let saved = serde_json::json!({
        "file": file.display().to_string(),
        "index": download.index,
        "term": download.term,
        "bytes": download.len,
    });
    if json {
        writeln!(out, "{saved}")?;
    } else {
        writeln!(
            out,
            "saved the snapshot at index {} (term {}), {} bytes, to {}",
            download.index,
            download.term,
            download.len,
            file.display()
        )?;
    }
    Ok(Ok(0))
}

async fn watch(
    client: &Client,
    prefix: &str,
    from_index: Option<u64>,
    json: bool,
    out: &mut (dyn Write + Send),
    err: &mut (dyn Write + Send),
) -> anyhow::Result<Result<i32, ClientError>> {
    let mut stream = match client.watch(prefix, from_index).await {
        Ok(stream) => stream,
        Err(e) => return Ok(Err(e)),
    };
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => {
                if json {
                    writeln!(out, "{}", serde_json::to_string(&event)?)?;
                } else {
                    out.write_all(render::watch_event(&event).as_bytes())?;
                }
                out.flush()?;
            }
            Err(e) => return Ok(Err(e)),
        }
    }
    writeln!(err, "error: unavailable: the server ended the watch")?;
    Ok(Ok(EXIT_FAILURE))
}

fn print<T: Serialize>(
    out: &mut (dyn Write + Send),
    json: bool,
    value: &T,
    render: fn(&T) -> String,
) -> anyhow::Result<()> {
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(value)?)?;
    } else {
        out.write_all(render(value).as_bytes())?;
    }
    Ok(())
}

/// The request of `raftctl cas` (clap guarantees one expectation and one outcome).
pub fn cas_request(args: &CasArgs) -> CasRequest {
    let mut request = CasRequest { value: args.value.clone(), ..CasRequest::default() };
    if let Some(version) = args.expect_version {
        request.expected_version = Some(version);
    } else if let Some(value) = &args.expect_value {
        request.expected_value = Some(Some(value.clone()));
    } else if args.expect_absent {
        request.expected_value = Some(None);
    }
    if args.delete {
        request.value = None;
    }
    request
}

/// The spec of `raftctl services register`: from `--file`, or from `--type` and `--node`s.
pub fn service_spec(args: &RegisterArgs) -> anyhow::Result<ServiceSpec> {
    if let Some(path) = &args.file {
        return read_spec_file(path);
    }
    let kind = args.kind.clone().context("--type is required without --file")?;
    Ok(ServiceSpec { kind, nodes: args.nodes.clone() })
}

fn read_spec_file(path: &Path) -> anyhow::Result<ServiceSpec> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(SPEC_FILE_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    anyhow::ensure!(
        bytes.len() as u64 <= SPEC_FILE_BYTES_MAX,
        "{} is over {SPEC_FILE_BYTES_MAX} bytes",
        path.display()
    );
    serde_json::from_slice(&bytes).with_context(|| format!("{} is not a service spec", path.display()))
}

#[cfg(test)]
mod tests;
