// Settings -> API keys: the page's behaviour over app.py's JSON endpoints.
// Every value from the server goes into the page as text (textContent),
// never as HTML.  A new key's token lives only in #secret while its dialog
// is open; no variable holds it beyond the call that shows it.
"use strict";

const $ = (id) => document.getElementById(id);
let org = null;   // { org_id, name, plan_scopes }

// A W3C traceparent per call, so each change's audit record names it.
function traceparent() {
  const hex = (n) => Array.from(crypto.getRandomValues(new Uint8Array(n)),
    (b) => b.toString(16).padStart(2, "0")).join("");
  return `00-${hex(16)}-${hex(8)}-01`;
}

async function call(method, path, body) {
  const headers = { traceparent: traceparent() };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    const err = new Error(data.error || `${resp.status} ${resp.statusText}`);
    err.status = resp.status;
    throw err;
  }
  return data;
}

function showError(err) {
  $("error").textContent = err ? err.message : "";
  $("error").hidden = !err;
}

const when = (iso) => (iso
  ? new Date(iso).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" }) : "");

function cell(tr, text, className) {
  const td = tr.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function button(td, text, onClick, className) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  if (className) b.className = className;
  b.addEventListener("click", () => onClick().catch(showError));
  td.append(b);
}

// ---- the list ----

async function loadKeys() {
  const { keys } = await call("GET", `/settings/orgs/${org.org_id}/keys`);
  const tbody = $("key-table").tBodies[0];
  tbody.replaceChildren();
  for (const key of keys) {
    const tr = tbody.insertRow();
    tr.dataset.keyId = key.key_id;
    tr.className = key.status;
    cell(tr, key.label, "label");
    cell(tr, key.prefix, "prefix mono");
    cell(tr, key.scopes ? key.scopes.join(", ") : "All (plan)", "scope");
    const created = cell(tr, when(key.created_at), "created");
    created.append(document.createElement("br"), `by ${key.created_by_name}`);
    cell(tr, key.last_used_at ? when(key.last_used_at) : "Never", "last-used");
    const status = cell(tr, "", "status");
    const badge = document.createElement("span");
    badge.className = `badge ${key.status}`;
    badge.textContent = key.status;
    status.append(badge);
    const stamp = (words, iso) => {
      const time = document.createElement("span");
      time.className = "when";
      time.textContent = when(iso);
      status.append(document.createElement("br"), words, time);
    };
    if (key.revoked_at) stamp("Revoked ", key.revoked_at);
    else if (key.expires_at) stamp("Expires ", key.expires_at);
    const actions = cell(tr, "", "row-actions");
    button(actions, "Usage", () => openUsage(key));
    if (key.status === "active") {
      button(actions, "Replace", () => replaceKey(key));
      button(actions, "Revoke", () => revokeKey(key), "danger");
    }
  }
  $("no-keys").hidden = keys.length > 0;
}

// ---- the token, once ----

function showSecret(token) {
  $("secret").textContent = token;
  $("copy").textContent = "Copy";
  $("secret-dialog").showModal();
}

// Empty the dialog's copy of the token, and any selection of it.
function forgetSecret() {
  $("secret").textContent = "";
  window.getSelection().removeAllRanges();
}

async function copySecret() {
  const secret = $("secret");
  try {
    await navigator.clipboard.writeText(secret.textContent);
  } catch {
    // No clipboard permission: select it, and let the browser copy that.
    const range = document.createRange();
    range.selectNodeContents(secret);
    window.getSelection().removeAllRanges();
    window.getSelection().addRange(range);
    document.execCommand("copy");
  }
  $("copy").textContent = "Copied";
}

// ---- create, replace, revoke ----

function openCreate() {
  $("create-form").reset();
  const box = $("create-scopes");
  box.replaceChildren();
  for (const scope of org.plan_scopes) {
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.type = "checkbox";
    input.value = scope;
    input.addEventListener("change", () => {   // picking a scope means "only these"
      $("create-form").elements["scope-mode"].value = "some";
    });
    label.append(input, ` ${scope}`);
    box.append(label);
  }
  $("create-dialog").showModal();
}

async function createKey() {
  const form = $("create-form");
  const some = form.elements["scope-mode"].value === "some";
  const scopes = some
    ? Array.from($("create-scopes").querySelectorAll("input:checked"), (i) => i.value)
    : null;
  const created = await call("POST", `/settings/orgs/${org.org_id}/keys`,
    { label: $("create-label").value, scopes });
  showSecret(created.token);
  await loadKeys();
}

// A confirm dialog; resolves true when its OK button closed it.
function confirmDialog(title, text, ok, withGrace) {
  $("confirm-title").textContent = title;
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = ok;
  $("grace-row").hidden = !withGrace;
  $("grace").value = "";
  const dialog = $("confirm-dialog");
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}

async function revokeKey(key) {
  const ok = await confirmDialog(`Revoke "${key.label}"?`,
    `Any request using ${key.prefix}… returns 401 from now on. ` +
    "A revoked key cannot be reactivated; its row stays in the list.", "Revoke key");
  if (!ok) return;
  await call("POST", `/settings/keys/${key.key_id}/revoke`, {});
  await loadKeys();
}

async function replaceKey(key) {
  const ok = await confirmDialog(`Replace "${key.label}"?`,
    "A new key with the same label, scopes and policy is created and its " +
    "secret shown once. Roll it out, watch its Last used, then revoke the old key.",
    "Create replacement", true);
  if (!ok) return;
  const grace = $("grace").value;
  const created = await call("POST", `/settings/keys/${key.key_id}/replace`,
    { grace_seconds: grace ? Number(grace) : null });
  showSecret(created.token);
  await loadKeys();
}

// ---- usage, for the exposed-key flow ----

let usageKey = null;

function localInput(date) {   // a Date as a datetime-local value
  const local = new Date(date.getTime() - date.getTimezoneOffset() * 60000);
  return local.toISOString().slice(0, 16);
}

async function openUsage(key) {
  usageKey = key;
  $("usage-prefix").textContent = key.prefix;
  $("usage-since").value = localInput(new Date(Date.now() - 24 * 3600 * 1000));
  await showUsage();
  $("usage-dialog").showModal();
}

async function showUsage() {
  const since = new Date($("usage-since").value).toISOString();
  const { usage } = await call("GET",
    `/settings/keys/${usageKey.key_id}/usage?since=${encodeURIComponent(since)}`);
  const rowsBody = $("usage-rows").tBodies[0];
  rowsBody.replaceChildren();
  const byIp = new Map();
  for (const u of usage) {
    const tr = rowsBody.insertRow();
    for (const v of [when(u.minute), u.client_ip ?? "unknown", u.scope ?? "", u.code, u.requests]) {
      cell(tr, String(v));
    }
    const ip = u.client_ip ?? "unknown";
    const sum = byIp.get(ip) || { requests: 0, refused: 0, last: u.minute };
    sum.requests += u.requests;
    if (u.code !== "VALID") sum.refused += u.requests;
    sum.last = u.minute;   // rows come ordered by minute
    byIp.set(ip, sum);
  }
  const ipBody = $("usage-by-ip").tBodies[0];
  ipBody.replaceChildren();
  for (const [ip, sum] of [...byIp].sort((a, b) => b[1].requests - a[1].requests)) {
    const tr = ipBody.insertRow();
    for (const v of [ip, sum.requests, sum.refused, when(sum.last)]) cell(tr, String(v));
  }
}

// ---- start ----

async function start() {
  let me;
  try {
    me = await call("GET", "/settings/me");
  } catch (err) {
    if (err.status !== 401) throw err;
    $("signin").hidden = false;
    return;
  }
  $("who").textContent = me.name;
  if (me.orgs.length === 0) {
    throw new Error("Only owners and admins of an organisation see its API keys.");
  }
  org = me.orgs[0];
  $("org-name").textContent = org.name;
  $("keys").hidden = false;
  await loadKeys();
}

document.addEventListener("DOMContentLoaded", () => {
  $("refresh").addEventListener("click", () => loadKeys().then(() => showError(null), showError));
  $("create").addEventListener("click", openCreate);
  $("create-dialog").addEventListener("close", () => {
    if ($("create-dialog").returnValue === "create") createKey().catch(showError);
  });
  $("copy").addEventListener("click", () => copySecret().catch(showError));
  // Done forgets the token before the dialog closes; Escape closes it
  // first, and the "close" event (a task later) forgets it.
  $("secret-done").addEventListener("click", () => {
    forgetSecret();
    $("secret-dialog").close();
  });
  $("secret-dialog").addEventListener("close", forgetSecret);
  $("usage-show").addEventListener("click", () => showUsage().catch(showError));
  start().catch(showError);
});
