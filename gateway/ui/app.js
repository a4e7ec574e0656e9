// memgate memory inspector: plain JS on the public memory API, no build step.
"use strict";

const PAGE_SIZE = 20;
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
  for (const hit of hits) {
    const score = el("span", {
      class: "score",
      title: "cosine similarity (with any recency bonus)",
      text: Number(hit.score).toFixed(3),
    });
    const item = el(
      "li",
      { class: "hit", "data-id": hit.id },
      el("div", { class: "hit-head" }, score, roleEl(hit.role), timeEl(hit.created_at)),
      el("p", { class: "content", text: hit.content }),
      metadataEl(hit.metadata),
      el("code", { class: "id", text: hit.id }),
    );
    list.append(item);
  }
}

// Memories, page by page

async function loadPage() {
  const body = $("memories").tBodies[0];
  $("memories").setAttribute("aria-busy", "true");
  try {
    const data = await api("GET", "/v1/memory/memories", {
      params: { namespace: state.namespace, limit: PAGE_SIZE, after: state.pages[state.page] },
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
    $("page-label").textContent = `Page ${state.page + 1}`;
    $("newer").disabled = state.page === 0;
    $("older").disabled = !data.has_more;
    return data.data;
  } finally {
    $("memories").removeAttribute("aria-busy");
  }
}

function memoryRow(memory) {
  const button = el("button", {
    type: "button",
    class: "ghost small",
    "aria-label": `Delete memory ${memory.id}`,
    text: "Delete",
  });
  button.addEventListener("click", () => deleteMemory(memory.id, button));
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
    el("td", { class: "actions" }, button),
  );
}

async function deleteMemory(id, button) {
  clearError();
  button.disabled = true;
  try {
    await api("DELETE", `/v1/memory/memories/${encodeURIComponent(id)}`, {
      params: { namespace: state.namespace },
    });
    for (const node of document.querySelectorAll(`.hit[data-id="${CSS.escape(id)}"]`)) node.remove();
    await loadPage();
    say(`Deleted memory ${id}.`);
  } catch (err) {
    button.disabled = false;
    showError(err);
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
  const key = apiKey();
  if (key) sessionStorage.setItem(KEY_STORE, key);
  else sessionStorage.removeItem(KEY_STORE);
  state.namespace = namespace;
  state.pages = [null];
  state.page = 0;
  for (const node of document.querySelectorAll(".ns-name")) node.textContent = namespace;
  $("hits").replaceChildren();
  $("hits-summary").textContent = "";
  say(`Opening ${namespace}…`);
  try {
    const rows = await loadPage();
    $("workspace").hidden = false;
    say(`Namespace ${namespace}: ${rows.length}${state.hasMore ? "+" : ""} memories on the first page.`);
    const url = new URL(window.location.href);
    url.searchParams.set("namespace", namespace);
    window.history.replaceState(null, "", url);
    suggestNamespaces();
  } catch (err) {
    $("workspace").hidden = true;
    say("");
    showError(err);
  }
}

async function suggestNamespaces() {
  // Admin keys may list namespaces; others simply get no suggestions.
  try {
    const data = await api("GET", "/v1/memory/namespaces");
    const list = $("namespaces");
    list.replaceChildren(
      ...data.data.map((n) => el("option", { value: n.namespace, label: `${n.count} memories` })),
    );
  } catch {
    /* not allowed or not available: typing the name is enough */
  }
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
    await loadPage();
    say(`Erased namespace ${data.namespace}: ${data.deleted} memories deleted.`);
  } catch (err) {
    showError(err);
  }
}

function init() {
  const params = new URLSearchParams(window.location.search);
  $("namespace").value = params.get("namespace") || sessionStorage.getItem(NS_STORE) || "";
  $("api-key").value = sessionStorage.getItem(KEY_STORE) || "";
  $("page-size").textContent = String(PAGE_SIZE);
  $("connect").addEventListener("submit", open);
  $("search").addEventListener("submit", search);
  $("refresh").addEventListener("click", () => turnPage(0));
  $("newer").addEventListener("click", () => turnPage(-1));
  $("older").addEventListener("click", () => turnPage(1));
  $("erase").addEventListener("click", askErase);
  $("erase-form").addEventListener("submit", erase);
  $("erase-cancel").addEventListener("click", () => $("erase-dialog").close());
  $("erase-confirm").addEventListener("input", () => {
    $("erase-go").disabled = $("erase-confirm").value !== state.namespace;
  });
  if ($("namespace").value) open();
}

document.addEventListener("DOMContentLoaded", init);
