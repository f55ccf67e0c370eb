// The Resilience dashboard: reads the node's API once a second and draws
// it; posts the admin's actions with the token typed once (kept in this
// browser's localStorage). Every value is put in the page as text, never
// as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "resilience-api-token";
let token = localStorage.getItem(TOKEN_KEY) || "";
// A link that carries the token in its fragment (`#token=…`, as the lab
// prints its dashboards): kept like a typed one, then taken off the
// address bar. A fragment never reaches a server, nor a Referer.
{
  const m = /^#token=([0-9A-Za-z._~-]{1,256})$/.exec(location.hash);
  if (m) {
    token = m[1];
    localStorage.setItem(TOKEN_KEY, token);
    history.replaceState(null, "", location.pathname + location.search);
  }
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function cap(s) {
  return s ? s.charAt(0).toUpperCase() + s.slice(1) : "";
}

function ago(s) {
  if (s === null || s === undefined) return "never";
  if (s < 1) return `${Math.round(s * 1000)} ms ago`;
  if (s < 120) return `${s.toFixed(1)} s ago`;
  return `${Math.round(s / 60)} min ago`;
}

// UTC with milliseconds, as `resilience events` prints them: one clock
// for the page, the CLI and the logs of both nodes.
function when(ms) {
  return ms ? new Date(ms).toISOString() : "—";
}

function fillDl(dl, pairs) {
  dl.replaceChildren();
  for (const [k, v] of pairs) {
    dl.append(el("dt", k), el("dd", v === null || v === undefined || v === "" ? "—" : v));
  }
}

function fillTable(table, head, rows) {
  table.replaceChildren();
  const tr = el("tr");
  for (const h of head) tr.append(el("th", h));
  table.append(tr);
  for (const r of rows) {
    const row = el("tr");
    for (const c of r) row.append(el("td", c === null || c === undefined ? "—" : c));
    table.append(row);
  }
}

function badge(id, text, cls) {
  const b = $(id);
  b.textContent = text;
  b.className = "badge " + (cls || "");
}

let labUrl = null;

function render(s) {
  const n = s.node || {};
  labUrl = s.lab || null;
  $("lab").hidden = !labUrl;
  $("top").classList.remove("stale");
  $("node-name").textContent = n.name || "";
  document.title = `${n.name || "node"} — ${cap(n.state)} — Resilience`;
  badge("node-type", cap(n.node_type));
  badge("node-mode", cap(n.mode));
  const busy = n.status && n.status !== "active" && n.status !== "inactive";
  const status = cap(n.state) + (busy ? ` (${n.status})` : "");
  badge("node-status", status, n.faulted ? "fault" : busy ? "busy" : n.state);
  $("updated").textContent = "updated " + new Date().toISOString().slice(11, 19) + " UTC";

  fillDl($("this"), [
    ["status", `${n.status}${n.reason ? " — " + n.reason : ""}`],
    ["takes new calls", n.takes_new_calls === undefined ? null : n.takes_new_calls ? "yes" : n.state === "active" ? "no (the peer takes them; calls in progress end here)" : "no"],
    ["PBX health", s.pbx ? s.pbx.health : null],
    ["held by an admin", n.held ? "yes (services stopped by hand)" : n.switched_away ? "yes (switched over to the peer)" : "no"],
    ["switchover", n.switchover || null],
    ["faulted", n.faulted ? "yes" : "no"],
    ["epoch", n.epoch],
    ["arbiters", (n.arbiters || []).length ? `${n.arbiters.join(", ")} (${n.arbiter_ok ? "reachable" : "unreachable"})` : "none configured"],
  ]);
  fillTable(
    $("services"),
    ["service", "state"],
    (s.services || []).map((x) => [x.name, x.running === null ? "no status command" : x.running ? "running" : "stopped"])
  );

  const p = s.peer;
  $("tl-peer-name").textContent = p ? p.name : "peer";
  $("tl-this-name").textContent = n.name || "this node";
  fillDl(
    $("peer"),
    p
      ? [
          ["name", p.name],
          ["address", p.address],
          ["last heartbeat", p.heard ? ago(p.last_heard_ago_s) : `not heard (${ago(p.last_heard_ago_s)})`],
          // A silent peer's status is only what it last said.
          ["status", p.heard ? p.status : p.status ? `last known: ${p.status} (${ago(p.last_heard_ago_s)})` : "never heard"],
          ["PBX health", p.pbx],
          ["epoch", p.epoch],
        ]
      : [["peer", "none (disabled node)"]]
  );

  const f = s.failback || {};
  let why = f.waiting_because || (f.requested ? "handover asked of the peer" : "");
  if (s.drain && s.drain.active_calls !== null && n.status === "draining") {
    why += ` — draining, ${s.drain.active_calls} active call(s)`;
  }
  fillDl($("failback"), [
    ["policy", f.policy],
    ["new calls during the drain", f.new_calls ? `on the ${f.new_calls}` : null],
    ["pending", f.pending ? "yes" : "no"],
    ["waiting because", why],
    ["due in", f.due_in_s !== null && f.due_in_s !== undefined ? `${f.due_in_s.toFixed(0)} s` : null],
    ["active calls", s.drain ? s.drain.active_calls : null],
  ]);

  const r = s.replication;
  if (r && r.jobs) {
    fillTable(
      $("replication"),
      ["job", "kind", "last success", "files", "last error"],
      Object.entries(r.jobs).map(([name, j]) => [
        name + (j.running ? " (running)" : ""),
        j.kind,
        when(j.last_success_ms),
        j.files,
        j.last_error || "",
      ])
    );
  } else {
    fillTable($("replication"), ["replication"], [["not configured on this node"]]);
  }

  const ps = s.pbx_settings || {};
  const files = (ps.files || []).map((x) => [x.file, x.what, x.error ? `error: ${x.error}` : x.state]);
  fillTable(
    $("pbx-settings"),
    ["file", "change", "state"],
    files.length ? files : [["none", "no [pbx_settings] in this node's config", ""]]
  );
  // Two PBXs serving: say it above everything else.
  const both = $("both-active");
  const bothActive = n.state === "active" && p && p.heard && p.status === "active";
  both.hidden = !bothActive;
  both.textContent = bothActive
    ? `Both nodes are Active: ${n.name} and ${p.name} both serve. The split-brain rule (${n.split_brain || "failback.split_brain"}) decides which one stops; check the events.`
    : "";
  const g = $("guard");
  g.hidden = !n.guard;
  g.textContent = n.guard ? `Not serving: ${n.guard}` : "";
  const w = $("warning");
  w.hidden = !ps.warning;
  w.textContent = ps.warning || "";

  const hb = s.heartbeat || {};
  const rejected = Object.entries(hb.rejected || {})
    .filter(([, v]) => v > 0)
    .map(([k, v]) => `${k}: ${v}`)
    .join(", ");
  fillDl($("heartbeat"), [
    ["interval", `${hb.interval_ms} ms`],
    ["failover after", `${hb.failover_after_ms} ms`],
    ["sent / received", `${hb.sent} / ${hb.received}`],
    ["rejected", rejected || "none"],
  ]);
}

// One line per transition: a node leaving Active or Inactive writes
// several events (the cause, each status step, the change of state) until
// it is Active or Inactive again; they become one row, headed by the
// change of state and its reason, the steps folded beneath it. Events
// outside a transition stay one row each. `events` is newest first.
const STABLE = new Set(["active", "inactive"]);
// Worth a line of their own even inside a transition: what went wrong.
const LOUD = new Set(["start_failed", "stop_failed", "faulted", "failback_data_failed", "split_brain", "action_failed", "command_refused"]);
function groupEvents(events) {
  const rows = [];
  let cur = null;
  for (const e of [...(events || [])].reverse()) {
    // A restart ends whatever transition the node was in (a crash, a kill).
    if (e.kind === "booted") cur = null;
    if (LOUD.has(e.kind)) {
      rows.push({ at_ms: e.at_ms, event: e, loud: true });
      if (cur) cur.steps.push(e);
      continue;
    }
    const m = e.kind === "status" ? /^status (\w+) -> (\w+)/.exec(e.text) : null;
    if (m && !cur && STABLE.has(m[1])) {
      cur = { at_ms: e.at_ms, from: m[1], to: null, head: null, steps: [] };
      // The cause logged in the same instant, just before the first step.
      while (rows.length && !rows[rows.length - 1].steps && !rows[rows.length - 1].loud && e.at_ms - rows[rows.length - 1].at_ms <= 100) {
        cur.steps.unshift(rows.pop().event);
      }
      rows.push(cur);
    }
    if (cur) {
      cur.steps.push(e);
      if (e.kind === "active") cur.head = e;
      if (m && STABLE.has(m[2])) {
        cur.to = m[2];
        cur = null;
      }
      continue;
    }
    rows.push({ at_ms: e.at_ms, event: e });
  }
  return rows.reverse();
}

function renderEvents(events) {
  const table = $("events");
  table.replaceChildren();
  const head = el("tr");
  head.append(el("th", "when"), el("th", "what"));
  table.append(head);
  for (const r of groupEvents(events)) {
    const tr = el("tr");
    tr.append(el("td", when(r.at_ms)));
    const td = el("td");
    if (r.steps) {
      const d = el("details");
      const title = `${cap(r.from)} → ${r.to ? cap(r.to) : "…"}`;
      d.append(el("summary", r.head ? `${title}: ${r.head.text}` : title));
      const ul = el("ul");
      for (const s of r.steps) ul.append(el("li", `${when(s.at_ms)} ${s.text}`));
      d.append(ul);
      td.append(d);
      tr.className = "transition";
    } else {
      td.textContent = r.event.text;
      if (r.loud) tr.className = "loud";
    }
    tr.append(td);
    table.append(tr);
  }
}

// "What happened": the view starts a little before the first change of
// the window (a minute-long failover fills the width instead of being a
// sliver of an hour), at least the last 10 minutes.
function fitView(t) {
  const first = Math.min(...t.marks.filter((m) => m.kind !== "boot").map((m) => m.at_ms), t.to_ms);
  const from = Math.min(t.to_ms - 600000, first - Math.max(30000, (t.to_ms - first) * 0.1));
  return { ...t, from_ms: Math.max(t.from_ms, from) };
}

function renderTimeline(t) {
  if ($("hours").value === "fit") t = fitView(t);
  const svg = $("timeline");
  const NS = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  const span = Math.max(1, t.to_ms - t.from_ms);
  const x = (ms) => ((ms - t.from_ms) / span) * 1000;
  const rows = [
    [t.this, 6],
    [t.peer, 38],
  ];
  for (const [segs, y] of rows) {
    for (const s of segs) {
      // Clipped to the view (a fitted view starts inside the window).
      if (s.to_ms <= t.from_ms) continue;
      const from = Math.max(s.from_ms, t.from_ms);
      const r = document.createElementNS(NS, "rect");
      r.setAttribute("x", x(from));
      r.setAttribute("y", y);
      r.setAttribute("width", Math.max(0.5, x(s.to_ms) - x(from)));
      r.setAttribute("height", 20);
      r.setAttribute("class", s.state);
      const title = document.createElementNS(NS, "title");
      title.textContent = `${s.state}: ${when(s.from_ms)} – ${when(s.to_ms)}`;
      r.append(title);
      svg.append(r);
    }
  }
  for (const m of t.marks.filter((m) => m.at_ms >= t.from_ms)) {
    const l = document.createElementNS(NS, "line");
    l.setAttribute("x1", x(m.at_ms));
    l.setAttribute("x2", x(m.at_ms));
    l.setAttribute("y1", 0);
    l.setAttribute("y2", 64);
    l.setAttribute("stroke", "#1d2330");
    l.setAttribute("stroke-width", m.kind === "boot" ? 1 : 2);
    const title = document.createElementNS(NS, "title");
    title.textContent = `${when(m.at_ms)}: ${m.text}`;
    l.append(title);
    svg.append(l);
  }
  $("tl-from").textContent = when(t.from_ms);
}

// A node that accepts and never answers (hung, or its socket held by
// systemd or a test while the daemon is down) counts as unreachable after
// 3 s, as one that refuses.
function timeout(ms) {
  if (AbortSignal.timeout) return AbortSignal.timeout(ms);
  const c = new AbortController();
  setTimeout(() => c.abort(), ms);
  return c.signal;
}

async function getJson(path) {
  const r = await fetch(path, { cache: "no-store", signal: timeout(3000) });
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}

// One refresh at a time: against a slow node, a late answer must not
// overwrite a newer one, nor an old timeout a fresh success.
let refreshing = false;
async function refresh() {
  if (refreshing) return;
  refreshing = true;
  try {
    render(await getJson("/api/v1/status"));
    renderEvents((await getJson("/api/v1/events?limit=40")).events);
  } catch (e) {
    $("top").classList.add("stale");
    // Not the last badge: a node that does not answer may not serve.
    badge("node-status", "Unreachable", "stale");
    $("updated").textContent = `node unreachable (${e.message}) — below, the last known state`;
  } finally {
    refreshing = false;
  }
}

let tick = 0;
async function refreshTimeline() {
  try {
    const h = $("hours").value;
    renderTimeline(await getJson(`/api/v1/timeline?hours=${h === "fit" ? 48 : h}`));
  } catch (e) {
    /* the status line already says the node is unreachable */
  }
}

function say(text, cls) {
  const r = $("action-result");
  r.textContent = text;
  r.className = cls;
}

async function act(what, path, body) {
  if (!token) {
    say(`${what}: enter the API token first (the node's api.token file)`, "error");
    $("token").focus();
    return;
  }
  say(`${what}…`, "");
  let r;
  try {
    r = await fetch(path, {
      method: "POST",
      headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
      body: JSON.stringify(body || {}),
    });
  } catch (e) {
    say(`${what}: the node did not answer (${e.message})`, "error");
    return;
  }
  let j = {};
  try {
    j = await r.json();
  } catch (e) {
    /* an empty or non-JSON answer: the status code says enough */
  }
  if (r.ok) {
    const jobs = j.jobs ? j.jobs.map((x) => (x.error ? `${x.job}: ${x.error}` : `${x.job}: ${x.files} file(s)`)).join("; ") : "";
    say(`${what}: ${j.message || jobs || "done"}`, "ok");
  } else if (r.status === 401) {
    say(`${what}: token refused (${j.error || "401"}) — enter the node's api.token`, "error");
  } else {
    say(`${what} refused: ${j.reason || j.error || "HTTP " + r.status}`, "error");
  }
  refresh();
  refreshTimeline();
}

const nodeName = () => $("node-name").textContent || "this node";
$("btn-start").addEventListener("click", () => {
  const force = $("force").checked;
  if (force && !confirm(`Force the services to start on ${nodeName()} even if its peer is active? Both nodes may then serve.`)) return;
  act("Start services", "/api/v1/services/start", { force });
});
$("btn-stop").addEventListener("click", () => {
  if (!confirm(`Stop the PBX services on ${nodeName()}? Calls on this node are cut.`)) return;
  act("Stop services", "/api/v1/services/stop");
});
$("btn-failback").addEventListener("click", () => act("Fail back now", "/api/v1/failback"));
$("btn-switchover").addEventListener("click", () => {
  if (!confirm(`Move the service between ${nodeName()} and its peer? The active node lets its calls end first.`)) return;
  act("Switch over", "/api/v1/switchover");
});
$("btn-replicate").addEventListener("click", () => act("Replicate now", "/api/v1/replicate"));
$("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = $("token").value.trim();
  localStorage.setItem(TOKEN_KEY, token);
  $("token").value = "";
  $("token-state").textContent = token ? "token set for this browser" : "no token";
});
$("hours").addEventListener("change", refreshTimeline);
for (const b of document.querySelectorAll("[data-lab]")) {
  b.addEventListener("click", async () => {
    const out = $("lab-result");
    if (!labUrl) return;
    try {
      const r = await fetch(`${labUrl}/lab/${b.dataset.lab}`, { method: "POST" });
      const j = await r.json();
      out.textContent = j.message || j.error;
    } catch (e) {
      out.textContent = `the lab did not answer (${e.message})`;
    }
  });
}
$("token-state").textContent = token ? "token set for this browser" : "no token: actions will ask for it";

refresh();
refreshTimeline();
setInterval(() => {
  refresh();
  tick += 1;
  if (tick % 5 === 0) refreshTimeline();
}, 1000);
