// The cluster page: polls GET /v1/cluster (every member's status, gathered by the node that
// serves this page) once a second and shows it. Everything from the network is put in the
// page as text, never as markup.
"use strict";

const POLL_MS = 1000;
const HISTORY_POINTS = 120;
const TOKEN_KEY = "raft-node-token";

const page = document.getElementById("page");
const samples = [];
let timer = null;

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

// A link may carry the token in its fragment (never sent to the server): keep it for this
// tab and take it out of the address bar.
function tokenFromFragment() {
  const match = /^#token=(.+)$/.exec(window.location.hash);
  if (match) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    window.history.replaceState(null, "", window.location.pathname + window.location.search);
  }
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function ms(us) {
  if (!us) return "-";
  const v = us / 1000;
  return v < 10 ? v.toFixed(2) : v < 100 ? v.toFixed(1) : v.toFixed(0);
}

function perSecond(count, windowMs) {
  return windowMs > 0 ? (count * 1000) / windowMs : 0;
}

function rate(v) {
  return v < 10 ? v.toFixed(1) : v.toFixed(0);
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}

function time(unixMs) {
  return new Date(unixMs).toLocaleTimeString();
}

function setState(state) {
  page.dataset.state = state;
  document.getElementById("login").hidden = state !== "login";
}

function showError(text) {
  const error = document.getElementById("error");
  error.textContent = text || "";
  error.hidden = !text;
}

async function poll() {
  timer = null;
  const headers = { Accept: "application/json" };
  const t = token();
  if (t) headers.Authorization = "Bearer " + t;
  try {
    const answer = await fetch("/v1/cluster", { headers, cache: "no-store" });
    if (answer.status === 401) {
      const reason = t ? "This token is not accepted; enter another." : "This cluster needs a token with the read role.";
      document.getElementById("login-reason").textContent = reason;
      setState("login");
      return; // Polling resumes when a token is entered.
    }
    const body = await answer.json();
    if (!answer.ok) {
      showError("GET /v1/cluster: " + answer.status + " " + (body.code || "") + ": " + (body.message || ""));
      if (answer.status === 403) { setState("login"); return; }
    } else {
      showError("");
      setState("ok");
      render(body);
    }
  } catch (e) {
    showError("The node serving this page does not answer (" + e.message + "); retrying.");
    page.dataset.state = "unreachable";
  }
  timer = setTimeout(poll, POLL_MS);
}

function render(view) {
  const statuses = view.members.filter((m) => m.status).map((m) => m.status);
  const leaderStatus = statuses.find((s) => s.id === view.leader && s.role === "leader");
  const cluster = statuses.length ? statuses[0].cluster : "";
  page.dataset.leader = view.leader === null || view.leader === undefined ? "" : String(view.leader);
  page.dataset.servedBy = String(view.served_by);
  document.getElementById("cluster-name").textContent = cluster ? "· cluster " + cluster : "";
  const term = statuses.reduce((max, s) => Math.max(max, s.term), 0);
  const reachable = view.members.filter((m) => m.status).length;
  const summary = document.getElementById("summary");
  summary.textContent = "";
  summary.append(
    view.leader !== null && view.leader !== undefined
      ? el("strong", "Leader: node " + view.leader, "role-leader")
      : el("strong", "No leader", "bad"),
    " · term " + term + " · " + reachable + " of " + view.members.length + " members reachable · served by node " +
      view.served_by + " · updated " + time(view.at_unix_ms),
  );
  renderAlerts(view, statuses, leaderStatus);
  renderMembers(view, leaderStatus);
  renderRates(statuses);
  renderElections(statuses);
}

function renderAlerts(view, statuses, leaderStatus) {
  const alerts = document.getElementById("alerts");
  alerts.textContent = "";
  const add = (text, bad) => alerts.append(el("li", text, bad ? "bad" : ""));
  if (view.leader === null || view.leader === undefined) add("No leader: an election is in progress or no quorum is reachable.", true);
  const source = leaderStatus || statuses[0];
  if (source && source.joint) add("A membership change is in progress (joint configuration).");
  if (source && source.leadership_transfer !== null && source.leadership_transfer !== undefined) {
    add("Leadership is being transferred to node " + source.leadership_transfer + ".");
  }
  for (const m of view.members) {
    if (!m.status) add("Node " + m.id + " is unreachable: " + (m.error || "no answer"), true);
  }
  for (const s of statuses) {
    if (s.fatal) add("Node " + s.id + " stopped: " + s.fatal, true);
    if (s.no_space) add("Node " + s.id + ": the state is over its quota; writes that grow it are refused.", true);
    if (s.recovering_to_index !== null && s.recovering_to_index !== undefined) {
      add("Node " + s.id + " is recovering data its storage lost (up to index " + s.recovering_to_index + ").");
    }
    for (const w of s.warnings || []) add("Node " + s.id + ": " + w);
  }
}

function renderMembers(view, leaderStatus) {
  const body = document.querySelector("#members tbody");
  body.textContent = "";
  for (const m of view.members) {
    const s = m.status;
    const row = document.createElement("tr");
    row.dataset.node = String(m.id);
    row.dataset.reachable = s ? "true" : "false";
    row.dataset.role = s ? s.role : "unreachable";
    const progress = leaderStatus ? leaderStatus.members.find((p) => p.id === m.id) : null;
    const a = s && s.activity;
    const cells = [
      el("td", m.id + (m.id === view.served_by ? " (this page)" : "")),
      s ? el("td", s.role + (m.role === "learner" && s.role !== "learner" ? " (learner)" : ""), "role-" + s.role)
        : el("td", "unreachable", "bad"),
      el("td", s ? s.term : "-"),
      el("td", s ? s.commit_index : "-"),
      el("td", s ? s.applied_index : "-"),
      el("td", s ? s.last_log_index : "-"),
      el("td", s ? s.snapshot_index : "-"),
      el("td", progress && progress.lag !== null && progress.lag !== undefined ? progress.lag : "-"),
      el("td", progress && progress.last_contact_ms !== null && progress.last_contact_ms !== undefined ? progress.last_contact_ms + " ms" : "-"),
      el("td", a ? rate(perSecond(a.writes, a.window_ms)) : "-"),
      el("td", a && a.writes ? ms(a.write_p50_us) + " / " + ms(a.write_p99_us) + " ms" : "-"),
      el("td", a ? rate(perSecond(a.reads, a.window_ms)) : "-"),
      el("td", a && a.reads ? ms(a.read_p50_us) + " / " + ms(a.read_p99_us) + " ms" : "-"),
      el("td", s ? s.keys : "-"),
      el("td", s ? bytes(s.state_bytes) + (s.quota_bytes ? " of " + bytes(s.quota_bytes) : "") : "-"),
      el("td", m.client_addr || "unknown"),
    ];
    row.append(...cells);
    body.append(row);
  }
}

function renderRates(statuses) {
  let writes = 0;
  let reads = 0;
  for (const s of statuses) {
    if (!s.activity) continue;
    writes += perSecond(s.activity.writes, s.activity.window_ms);
    reads += perSecond(s.activity.reads, s.activity.window_ms);
  }
  samples.push({ writes, reads });
  if (samples.length > HISTORY_POINTS) samples.shift();
  document.getElementById("rates-now").textContent = "now: " + rate(writes) + " writes/s, " + rate(reads) + " reads/s";
  const svg = document.getElementById("rates");
  svg.textContent = "";
  const top = Math.max(1, ...samples.map((p) => Math.max(p.writes, p.reads)));
  const x = (i) => (600 * (i + HISTORY_POINTS - samples.length)) / (HISTORY_POINTS - 1);
  const y = (v) => 115 - (110 * v) / top;
  for (const key of ["writes", "reads"]) {
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("class", key);
    line.setAttribute("points", samples.map((p, i) => x(i).toFixed(1) + "," + y(p[key]).toFixed(1)).join(" "));
    svg.append(line);
  }
  const label = document.createElementNS("http://www.w3.org/2000/svg", "text");
  label.setAttribute("x", "4");
  label.setAttribute("y", "14");
  label.setAttribute("font-size", "11");
  label.setAttribute("fill", "currentColor");
  label.textContent = "max " + rate(top) + "/s";
  svg.append(label);
}

function renderElections(statuses) {
  // Each node reports the changes it saw; the same term and leader seen by several nodes is
  // one change, dated by the earliest report.
  const changes = new Map();
  for (const s of statuses) {
    for (const c of s.leader_changes || []) {
      if (c.leader === null || c.leader === undefined) continue;
      const key = c.term + "/" + c.leader;
      const known = changes.get(key);
      if (!known || c.at_unix_ms < known.at_unix_ms) changes.set(key, c);
    }
  }
  const list = [...changes.values()].sort((a, b) => b.term - a.term || b.at_unix_ms - a.at_unix_ms).slice(0, 10);
  const ol = document.getElementById("elections");
  ol.textContent = "";
  if (!list.length) ol.append(el("li", "none seen", "muted"));
  for (const c of list) {
    const item = el("li", "term " + c.term + ": node " + c.leader + " leads, since " + time(c.at_unix_ms));
    item.dataset.term = String(c.term);
    item.dataset.leader = String(c.leader);
    ol.append(item);
  }
}

document.getElementById("login").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value.trim());
  document.getElementById("token").value = "";
  setState("loading");
  if (timer) clearTimeout(timer);
  poll();
});

tokenFromFragment();
poll();
