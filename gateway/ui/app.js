// memgate memory inspector: plain JS on the public memory API, no build step.
"use strict";

const PAGE_SIZE = 20;
const NS_PAGE_SIZE = 20;
const DAY_MS = 86_400_000;
const KEY_STORE = "memgate.apiKey";
const NS_STORE = "memgate.namespace";
const NAMESPACE = /^[A-Za-z0-9._:@-]{1,128}$/;

const $ = (id) => document.getElementById(id);

const state = {
  namespace: "",
  pages: [null], // the `after` cursor of each page seen; pages[i] opens page i + 1
  page: 0,
  hasMore: false,
  lastQuery: null,
  lastPreview: null, // the question of the preview shown
  filters: { role: "", from: "", to: "" },
  nsOffset: 0, // the offset of the next page of namespaces
  nsLoading: null,
};

class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

function apiKey() {
  return $("api-key").value.trim();
}

async function api(method, path, { params = {}, body } = {}) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(params)) {
    if (value !== null && value !== undefined) url.searchParams.set(name, String(value));
  }
  const headers = { accept: "application/json" };
  const key = apiKey();
  if (key) headers.authorization = `Bearer ${key}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  let response;
  try {
    response = await fetch(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit",
      cache: "no-store",
    });
  } catch (err) {
    throw new ApiError(`Cannot reach the gateway (${err.message}). Is it still running?`, 0);
  }
  let data = null;
  const text = await response.text();
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const message =
      (data && data.error && (data.error.message || data.error)) ||
      text.slice(0, 300) ||
      response.statusText;
    if (response.status === 401) {
      throw new ApiError(
        `The gateway refused the API key (401): ${message}. Enter a valid key above and open the namespace again.`,
        401,
      );
    }
    if (response.status === 403) {
      throw new ApiError(`This key is not allowed to do that (403): ${message}`, 403);
    }
    throw new ApiError(`${method} ${url.pathname} failed (${response.status}): ${message}`, response.status);
  }
  return data;
}

function showError(err) {
  const box = $("error");
  box.textContent = err instanceof ApiError ? err.message : `Unexpected error: ${err}`;
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function say(text) {
  $("status").textContent = text;
}

function formatDate(value) {
  // RFC 3339 → "2024-05-01 12:34:56" (UTC), as the CLI shows it
  return String(value).replace("T", " ").slice(0, 19);
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function timeEl(value) {
  return el("time", { datetime: value, text: formatDate(value) });
}

function metadataEl(metadata) {
  // import_key is the importer's bookkeeping (see `memgate import`), not worth showing
  // sorted by name: the store does not keep the order they were given in
  const entries = Object.entries(metadata || {})
    .filter(([name]) => name !== "import_key")
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  if (!entries.length) return null;
  const list = el("dl", { class: "meta" });
  for (const [name, value] of entries) {
    list.append(el("div", {}, el("dt", { text: name }), el("dd", { text: String(value) })));
  }
  return list;
}

function roleEl(role) {
  return el("span", { class: `role role-${/^[a-z]+$/.test(role) ? role : "other"}`, text: role });
}

// Search

async function search(event) {
  event.preventDefault();
  clearError();
  const query = $("query").value.trim();
  if (!query) return;
  const k = Math.min(100, Math.max(1, parseInt($("k").value, 10) || 10));
  const section = $("hits");
  section.setAttribute("aria-busy", "true");
  try {
    const data = await api("POST", "/v1/memory/search", {
      params: { namespace: state.namespace },
      body: { query, k },
    });
    state.lastQuery = { query, k };
    renderHits(data.data, query);
  } catch (err) {
    showError(err);
  } finally {
    section.removeAttribute("aria-busy");
  }
}

function renderHits(hits, query) {
  const list = $("hits");
  list.replaceChildren();
  $("hits-summary").textContent = hits.length
    ? `${hits.length} ${hits.length === 1 ? "memory" : "memories"} recalled for “${query}”.`
    : `Nothing close enough to recall for “${query}”.`;
  list.append(...hits.map(hitItem));
}

function conversationOf(memory) {
  const value = (memory.metadata || {}).conversation_id;
  return typeof value === "string" && value ? value : null;
}

function hitItem(hit) {
  const score = el("span", {
    class: "score",
    title: "cosine similarity (with any recency bonus)",
    text: Number(hit.score).toFixed(3),
  });
  const attrs = { class: "hit", "data-id": hit.id };
  if (conversationOf(hit)) attrs["data-conversation"] = conversationOf(hit);
  return el(
    "li",
    attrs,
    el("div", { class: "hit-head" }, score, roleEl(hit.role), timeEl(hit.created_at)),
    el("p", { class: "content", text: hit.content }),
    metadataEl(hit.metadata),
    el("code", { class: "id", text: hit.id }),
  );
}

// Preview: exactly what the memory chat would inject (POST /v1/memory/recall)

async function preview(event) {
  event.preventDefault();
  clearError();
  const query = $("preview-query").value.trim();
  if (!query) return;
  const list = $("preview-memories");
  list.setAttribute("aria-busy", "true");
  try {
    state.lastPreview = query;
    await refreshPreview();
  } catch (err) {
    showError(err);
  } finally {
    list.removeAttribute("aria-busy");
  }
}

async function refreshPreview() {
  // the message changes with the namespace: after a delete it is asked for again
  const query = state.lastPreview;
  const data = await api("POST", "/v1/memory/recall", {
    params: { namespace: state.namespace },
    body: { query },
  });
  if (query === state.lastPreview) renderPreview(data, query);
}

function clearPreview() {
  state.lastPreview = null;
  $("preview-memories").replaceChildren();
  $("preview-summary").textContent = "";
  $("preview-message").textContent = "";
  $("preview-figure").hidden = true;
}

function renderPreview(data, query) {
  const figure = $("preview-figure");
  $("preview-memories").replaceChildren(...data.data.map(hitItem));
  if (data.message === null) {
    figure.hidden = true;
    $("preview-message").textContent = "";
    $("preview-summary").textContent =
      `Nothing would be injected for “${query}”: the request would go upstream as it is.`;
    return;
  }
  const n = data.data.length;
  $("preview-summary").textContent =
    `One ${data.message.role} message with ${n} ${n === 1 ? "memory" : "memories"} would be ` +
    `injected for “${query}” (after the client's own system messages):`;
  $("preview-message").textContent = data.message.content;
  figure.hidden = false;
}

// Memories, page by page

async function loadPage() {
  const body = $("memories").tBodies[0];
  $("memories").setAttribute("aria-busy", "true");
  try {
    const data = await api("GET", "/v1/memory/memories", {
      params: {
        namespace: state.namespace,
        limit: PAGE_SIZE,
        after: state.pages[state.page],
        ...filterParams(state.filters),
      },
    });
    if (!data.data.length && state.page > 0) {
      // the page emptied (deleted memories): go back one
      state.page -= 1;
      state.pages.length = state.page + 1;
      return loadPage();
    }
    state.hasMore = data.has_more;
    state.pages.length = state.page + 1;
    if (data.has_more && data.data.length) state.pages.push(data.data[data.data.length - 1].id);
    body.replaceChildren(...data.data.map(memoryRow));
    $("empty").hidden = data.data.length > 0 || state.page > 0;
    $("empty").textContent = filtering()
      ? "No memories match these filters."
      : "No memories in this namespace.";
    $("page-label").textContent = `Page ${state.page + 1}`;
    $("newer").disabled = state.page === 0;
    $("older").disabled = !data.has_more;
    return data.data;
  } finally {
    $("memories").removeAttribute("aria-busy");
  }
}

function memoryRow(memory) {
  const actions = el("td", { class: "actions" });
  showDeleteButton(actions, memory.id, conversationOf(memory));
  const content = el("td", { class: "content" }, el("p", { text: memory.content }));
  const meta = metadataEl(memory.metadata);
  if (meta) content.append(meta);
  content.append(el("code", { class: "id", text: memory.id }));
  return el(
    "tr",
    { "data-id": memory.id },
    el("td", { class: "nowrap" }, timeEl(memory.created_at)),
    el("td", {}, roleEl(memory.role)),
    content,
    actions,
  );
}

function showDeleteButton(cell, id, conversation) {
  const button = el("button", {
    type: "button",
    class: "ghost small",
    "aria-label": `Delete memory ${id}`,
    text: "Delete",
  });
  button.addEventListener("click", () => askDelete(cell, id, conversation));
  const buttons = [button];
  if (conversation) {
    const forget = el("button", {
      type: "button",
      class: "ghost small",
      "aria-label": `Forget conversation ${conversation}`,
      title: `Delete every memory of conversation ${conversation}`,
      text: "Forget conversation",
    });
    forget.addEventListener("click", () => askForget(cell, id, conversation));
    buttons.push(forget);
  }
  cell.replaceChildren(el("div", { class: "row-actions" }, ...buttons));
  return button;
}

// Deleting a memory takes a second click: the row's button turns into Delete / Keep.
function askDelete(cell, id, conversation) {
  clearError();
  const yes = el("button", {
    type: "button",
    class: "danger-button small",
    "aria-label": `Confirm deleting memory ${id}`,
    text: "Delete",
  });
  const no = el("button", {
    type: "button",
    class: "small",
    "aria-label": `Keep memory ${id}`,
    text: "Keep",
  });
  const keep = () => showDeleteButton(cell, id, conversation).focus();
  yes.addEventListener("click", () => deleteMemory(id, yes, no));
  no.addEventListener("click", keep);
  cell.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && cell.contains(no)) keep();
  });
  cell.replaceChildren(el("div", { class: "confirm" }, el("span", { text: "Delete for good?" }), yes, no));
  no.focus();
}

async function deleteMemory(id, ...buttons) {
  clearError();
  for (const button of buttons) button.disabled = true;
  try {
    await api("DELETE", `/v1/memory/memories/${encodeURIComponent(id)}`, {
      params: { namespace: state.namespace },
    });
    const shown = document.querySelectorAll(`.hit[data-id="${CSS.escape(id)}"]`);
    const inPreview = [...shown].some((node) => $("preview-memories").contains(node));
    for (const node of shown) node.remove();
    const again = inPreview && state.lastPreview ? refreshPreview() : null;
    await Promise.all([loadPage(), loadTotal(), again]);
    say(`Deleted memory ${id}.`);
  } catch (err) {
    for (const button of buttons) button.disabled = false;
    showError(err);
  }
}

// Forgetting a conversation: every memory with its conversation_id (a memory chat sent with
// an x-memory-conversation header, or a ChatGPT import), queued ones included, in one
// DELETE /v1/memory/memories?conversation_id=... It takes a second click too.
function askForget(cell, id, conversation) {
  clearError();
  const yes = el("button", {
    type: "button",
    class: "danger-button small",
    "aria-label": `Confirm forgetting conversation ${conversation}`,
    text: "Forget",
  });
  const no = el("button", {
    type: "button",
    class: "small",
    "aria-label": `Keep conversation ${conversation}`,
    text: "Keep",
  });
  const keep = () => {
    showDeleteButton(cell, id, conversation);
    cell.querySelector("button:last-child").focus();
  };
  yes.addEventListener("click", () => forgetConversation(conversation, yes, no));
  no.addEventListener("click", keep);
  cell.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && cell.contains(no)) keep();
  });
  cell.replaceChildren(
    el("div", { class: "confirm" }, el("span", { text: "Forget the whole conversation?" }), yes, no),
  );
  no.focus();
}

async function forgetConversation(conversation, ...buttons) {
  clearError();
  for (const button of buttons) button.disabled = true;
  try {
    const data = await api("DELETE", "/v1/memory/memories", {
      params: { namespace: state.namespace, conversation_id: conversation },
    });
    const shown = document.querySelectorAll(`.hit[data-conversation="${CSS.escape(conversation)}"]`);
    const inPreview = [...shown].some((node) => $("preview-memories").contains(node));
    for (const node of shown) node.remove();
    const again = inPreview && state.lastPreview ? refreshPreview() : null;
    await Promise.all([loadPage(), loadTotal(), again]);
    const n = data.deleted;
    say(`Forgot conversation ${conversation}: ${n} ${n === 1 ? "memory" : "memories"} deleted.`);
  } catch (err) {
    for (const button of buttons) button.disabled = false;
    showError(err);
  }
}

// Filters: role (one, or several separated by commas) and creation dates, applied by the
// gateway (`filter` and `created_after` / `created_before` on the list).

function filtering() {
  const f = state.filters;
  return Boolean(f.role || f.from || f.to);
}

function filterParams(filters) {
  const params = {};
  const roles = filters.role
    .split(",")
    .map((r) => r.trim())
    .filter(Boolean);
  if (roles.length === 1) params.filter = JSON.stringify({ role: roles[0] });
  else if (roles.length > 1) params.filter = JSON.stringify({ role: { $in: roles } });
  // dates are whole UTC days, both included: [from 00:00, the day after `to` 00:00)
  if (filters.from) params.created_after = `${filters.from}T00:00:00Z`;
  if (filters.to) {
    const next = new Date(Date.parse(`${filters.to}T00:00:00Z`) + DAY_MS);
    params.created_before = next.toISOString().replace(".000Z", "Z");
  }
  return params;
}

function describeFilters(filters) {
  const parts = [];
  if (filters.role) parts.push(`role ${filters.role}`);
  if (filters.from && filters.to) parts.push(`created ${filters.from} to ${filters.to}`);
  else if (filters.from) parts.push(`created on or after ${filters.from}`);
  else if (filters.to) parts.push(`created on or before ${filters.to}`);
  return parts.length ? `Showing only memories with ${parts.join(", ")} (UTC).` : "";
}

async function applyFilters(event) {
  if (event) event.preventDefault();
  clearError();
  const filters = {
    role: $("filter-role").value.trim(),
    from: $("filter-from").value,
    to: $("filter-to").value,
  };
  if (filters.from && filters.to && filters.from > filters.to) {
    showError(new ApiError("The From date is after the To date.", 0));
    return;
  }
  state.filters = filters;
  state.pages = [null];
  state.page = 0;
  $("filter-summary").textContent = describeFilters(filters);
  try {
    await loadPage();
  } catch (err) {
    showError(err);
  }
}

function resetFilters() {
  $("filter-role").value = "";
  $("filter-from").value = "";
  $("filter-to").value = "";
  state.filters = { role: "", from: "", to: "" };
  $("filter-summary").textContent = "";
}

// The namespace's total (GET /v1/memory/namespaces/{namespace})

async function loadTotal() {
  const target = $("ns-total");
  try {
    const data = await api("GET", `/v1/memory/namespaces/${encodeURIComponent(state.namespace)}`);
    if (data.namespace !== state.namespace) return;
    target.textContent = `${data.count.toLocaleString("en-US")} ${data.count === 1 ? "memory" : "memories"}`;
  } catch {
    target.textContent = "";
  }
}

async function turnPage(step) {
  clearError();
  state.page = Math.max(0, state.page + step);
  try {
    await loadPage();
  } catch (err) {
    showError(err);
  }
}

// Opening a namespace

async function open(event) {
  if (event) event.preventDefault();
  clearError();
  const namespace = $("namespace").value.trim();
  if (!NAMESPACE.test(namespace)) {
    showError(new ApiError("Enter a namespace: 1-128 characters of A-Z a-z 0-9 . _ : @ -", 0));
    $("namespace").focus();
    return;
  }
  sessionStorage.setItem(NS_STORE, namespace);
  saveKey();
  state.namespace = namespace;
  state.pages = [null];
  state.page = 0;
  for (const node of document.querySelectorAll(".ns-name")) node.textContent = namespace;
  $("hits").replaceChildren();
  $("hits-summary").textContent = "";
  clearPreview();
  $("ns-total").textContent = "";
  resetFilters();
  say(`Opening ${namespace}…`);
  try {
    const [rows] = await Promise.all([loadPage(), loadTotal()]);
    $("workspace").hidden = false;
    $("landing").hidden = true;
    say(`Namespace ${namespace}: ${rows.length}${state.hasMore ? "+" : ""} memories on the first page.`);
    const url = new URL(window.location.href);
    url.searchParams.set("namespace", namespace);
    window.history.replaceState(null, "", url);
  } catch (err) {
    $("workspace").hidden = true;
    $("landing").hidden = false;
    say("");
    showError(err);
  }
}

function saveKey() {
  const key = apiKey();
  if (key) sessionStorage.setItem(KEY_STORE, key);
  else sessionStorage.removeItem(KEY_STORE);
}

// The landing page: the namespaces with their counts (admin keys; GET /v1/memory/namespaces)

function loadNamespaces({ more = false } = {}) {
  // one load at a time: a second click on "more" waits for the first
  if (state.nsLoading) return state.nsLoading;
  state.nsLoading = fetchNamespaces(more).finally(() => {
    state.nsLoading = null;
  });
  return state.nsLoading;
}

async function fetchNamespaces(more) {
  const list = $("ns-list");
  const note = $("ns-note");
  const offset = more ? state.nsOffset : 0;
  list.setAttribute("aria-busy", "true");
  try {
    const data = await api("GET", "/v1/memory/namespaces", {
      params: { limit: NS_PAGE_SIZE, offset },
    });
    const cards = data.data.map(namespaceCard);
    if (more) list.append(...cards);
    else list.replaceChildren(...cards);
    state.nsOffset = data.next_offset ?? offset + data.data.length;
    $("ns-more").hidden = !data.has_more;
    const shown = list.children.length;
    $("ns-shown").textContent = shown ? `${shown} shown${data.has_more ? ", more to come" : ""}.` : "";
    note.hidden = shown > 0;
    note.textContent = shown ? "" : "No namespace holds memories yet.";
    const options = [...list.querySelectorAll(".ns-card")].map((card) =>
      el("option", { value: card.dataset.namespace, label: card.dataset.label }),
    );
    $("namespaces").replaceChildren(...options);
  } catch (err) {
    if (!more) {
      list.replaceChildren();
      $("namespaces").replaceChildren();
    }
    $("ns-more").hidden = true;
    $("ns-shown").textContent = "";
    note.hidden = false;
    if (err.status === 403) {
      note.textContent =
        "Listing namespaces needs an admin key. Type the namespace your key may use above and open it.";
    } else if (err.status === 401) {
      note.textContent = `No namespaces to show: ${err.message}`;
    } else {
      note.textContent = `The namespaces could not be listed: ${err.message}`;
    }
  } finally {
    list.removeAttribute("aria-busy");
  }
}

function namespaceCard(info) {
  const label = `${info.count.toLocaleString("en-US")} ${info.count === 1 ? "memory" : "memories"}`;
  const button = el(
    "button",
    { type: "button", class: "ns-card", "data-namespace": info.namespace, "data-label": label },
    el("span", { class: "ns-card-name", text: info.namespace }),
    el("span", { class: "ns-card-count", text: label }),
  );
  button.addEventListener("click", () => {
    $("namespace").value = info.namespace;
    open();
  });
  return el("li", {}, button);
}

function showLanding() {
  clearError();
  say("");
  $("workspace").hidden = true;
  $("landing").hidden = false;
  state.namespace = "";
  const url = new URL(window.location.href);
  url.searchParams.delete("namespace");
  window.history.replaceState(null, "", url);
  loadNamespaces();
}

// Erasing the namespace

function askErase() {
  clearError();
  $("erase-confirm").value = "";
  $("erase-go").disabled = true;
  $("erase-dialog").showModal();
  $("erase-confirm").focus();
}

async function erase(event) {
  event.preventDefault();
  if ($("erase-confirm").value !== state.namespace) return;
  $("erase-dialog").close();
  try {
    const data = await api("DELETE", `/v1/memory/namespaces/${encodeURIComponent(state.namespace)}`);
    state.pages = [null];
    state.page = 0;
    $("hits").replaceChildren();
    $("hits-summary").textContent = "";
    clearPreview();
    await Promise.all([loadPage(), loadTotal()]);
    say(`Erased namespace ${data.namespace}: ${data.deleted} memories deleted.`);
  } catch (err) {
    showError(err);
  }
}

function init() {
  const params = new URLSearchParams(window.location.search);
  const direct = params.get("namespace");
  $("namespace").value = direct || sessionStorage.getItem(NS_STORE) || "";
  $("api-key").value = sessionStorage.getItem(KEY_STORE) || "";
  $("page-size").textContent = String(PAGE_SIZE);
  $("connect").addEventListener("submit", open);
  $("search").addEventListener("submit", search);
  $("preview").addEventListener("submit", preview);
  $("filters").addEventListener("submit", applyFilters);
  $("filter-clear").addEventListener("click", () => {
    resetFilters();
    applyFilters();
  });
  $("back").addEventListener("click", showLanding);
  $("ns-refresh").addEventListener("click", () => {
    saveKey();
    loadNamespaces();
  });
  $("ns-more").addEventListener("click", () => loadNamespaces({ more: true }));
  $("refresh").addEventListener("click", () => turnPage(0));
  $("newer").addEventListener("click", () => turnPage(-1));
  $("older").addEventListener("click", () => turnPage(1));
  $("erase").addEventListener("click", askErase);
  $("erase-form").addEventListener("submit", erase);
  $("erase-cancel").addEventListener("click", () => $("erase-dialog").close());
  $("erase-confirm").addEventListener("input", () => {
    $("erase-go").disabled = $("erase-confirm").value !== state.namespace;
  });
  if (direct) {
    $("landing").hidden = true;
    open();
  }
  loadNamespaces();
}

document.addEventListener("DOMContentLoaded", init);
