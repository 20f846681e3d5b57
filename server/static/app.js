// Trio's page: search by text or image, classify, show results, and review the catalogue's
// duplicate groups and label issues. Talks to the JSON API of the server that served it; no
// external scripts. Every view's state is in the address (`?view=duplicates&label=cat&page=2`),
// so a reload or a shared link shows the same thing.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { image: null }; // base64 data URL of the chosen image

const keyInput = $("api-key");
keyInput.value = localStorage.getItem("trio-api-key") || "";
keyInput.addEventListener("change", () => {
  localStorage.setItem("trio-api-key", keyInput.value.trim());
});

function headers(extra) {
  const h = Object.assign({}, extra);
  const key = keyInput.value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function setStatus(text, isError) {
  const status = $("status");
  status.textContent = text;
  status.className = isError ? "error" : "";
}

// Calls the API; an error answer becomes an Error carrying the server's message and status.
async function api(method, path, body) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const message = data && data.error ? data.error.message : response.statusText;
    const err = new Error(message + " (" + response.status + ")");
    err.status = response.status;
    if (response.status === 401 || response.status === 403) $("key-box").open = true;
    throw err;
  }
  return data;
}

const postJson = (path, body) => api("POST", path, body);

function busy(on) {
  $("search-btn").disabled = on;
  $("classify-btn").disabled = on;
}

// ---- image choice -------------------------------------------------------------------------

function chooseFile(file) {
  if (!file) return;
  if (!file.type.startsWith("image/")) {
    setStatus(file.name + " is not an image", true);
    return;
  }
  const reader = new FileReader();
  reader.onload = () => {
    state.image = reader.result;
    const preview = $("preview");
    preview.src = reader.result;
    preview.hidden = false;
    $("drop-hint").textContent = file.name;
    $("clear-image").hidden = false;
    setStatus("");
  };
  reader.onerror = () => setStatus("could not read " + file.name, true);
  reader.readAsDataURL(file);
}

$("upload").addEventListener("change", (e) => chooseFile(e.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  chooseFile(e.dataTransfer.files[0]);
});
$("clear-image").addEventListener("click", () => {
  state.image = null;
  $("upload").value = "";
  $("preview").hidden = true;
  $("preview").removeAttribute("src");
  $("drop-hint").textContent = "Drop an image here, or click to choose one: search by it or classify it.";
  $("clear-image").hidden = true;
});

// ---- search -------------------------------------------------------------------------------

// A thumbnail box showing the image at `url` (none: an empty box).
function thumbnail(url, alt) {
  const box = document.createElement("div");
  box.className = "thumb";
  if (!url) return box;
  const img = document.createElement("img");
  img.alt = alt;
  img.loading = "lazy";
  if (keyInput.value.trim()) {
    // An <img> cannot send the key: fetch the bytes and show them from a blob URL.
    fetch(url, { headers: headers() })
      .then((r) => (r.ok ? r.blob() : Promise.reject(r.status)))
      .then((blob) => { img.src = URL.createObjectURL(blob); })
      .catch(() => { img.alt = "image unavailable"; });
  } else {
    img.src = url;
  }
  box.appendChild(img);
  return box;
}

function renderHits(hits) {
  const results = $("results");
  results.replaceChildren();
  for (const hit of hits) {
    const card = document.createElement("div");
    card.className = "card";
    card.dataset.id = hit.id;
    const url = hit.has_image ? "/v1/items/" + encodeURIComponent(hit.id) + "/image" : null;
    card.appendChild(thumbnail(url, hit.title || hit.id));
    const meta = document.createElement("div");
    meta.className = "meta";
    const title = document.createElement("div");
    title.className = "title";
    title.textContent = hit.title || hit.id;
    const label = document.createElement("div");
    label.className = "label";
    label.textContent = hit.label || "";
    const score = document.createElement("div");
    score.className = "score";
    score.textContent = "score " + hit.score.toFixed(3);
    meta.append(title, label, score);
    card.appendChild(meta);
    results.appendChild(card);
  }
}

$("search-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const text = $("query").value.trim();
  const body = { space: $("space").value, k: 24 };
  if (text) body.text = text;
  else if (state.image) body.image = state.image;
  else { setStatus("type a query or choose an image", true); return; }
  // A text search is in the address, so it can be shared and survives a reload.
  if (text) history.replaceState(null, "", "?" + new URLSearchParams({ view: "search", q: text, space: body.space }));
  busy(true);
  setStatus("searching…");
  try {
    const data = await postJson("/v1/search", body);
    renderHits(data.hits);
    setStatus(data.hits.length + " results");
  } catch (err) {
    setStatus(err.message, true);
  } finally {
    busy(false);
  }
});

// ---- classify -----------------------------------------------------------------------------

function renderClassification(data) {
  const list = $("classify-results");
  list.replaceChildren();
  for (const entry of data.labels) {
    const li = document.createElement("li");
    const row = document.createElement("div");
    row.className = "row";
    const name = document.createElement("span");
    name.className = "label-name";
    name.textContent = entry.label;
    const p = document.createElement("span");
    p.className = "probability";
    p.textContent = (entry.probability * 100).toFixed(1) + "%";
    row.append(name, p);
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = Math.max(0, Math.min(100, entry.probability * 100)) + "%";
    bar.appendChild(fill);
    li.append(row, bar);
    list.appendChild(li);
  }
}

$("classify-btn").addEventListener("click", async () => {
  const text = $("query").value.trim();
  const body = { top_k: 5 };
  if (state.image) body.image = state.image;
  if (text) body.title = text;
  if (!body.image && !body.title) { setStatus("choose an image or type a title to classify", true); return; }
  busy(true);
  setStatus("classifying…");
  try {
    renderClassification(await postJson("/v1/classify", body));
    setStatus("");
  } catch (err) {
    setStatus(err.message, true);
  } finally {
    busy(false);
  }
});

// ---- views --------------------------------------------------------------------------------

const params = new URLSearchParams(location.search);
const view = ["duplicates", "labels"].includes(params.get("view")) ? params.get("view") : "search";
const page = Math.max(1, parseInt(params.get("page"), 10) || 1);
const labelFilter = (params.get("label") || "").trim();
const GROUPS_PER_PAGE = 10;
const ISSUES_PER_PAGE = 20;

for (const section of document.querySelectorAll(".view")) section.hidden = section.id !== view + "-view";
for (const link of document.querySelectorAll("#views a")) {
  link.classList.toggle("current", link.dataset.view === view);
}

// The address of this view with `changes` applied (null removes a parameter).
function viewUrl(changes) {
  const next = new URLSearchParams(location.search);
  for (const [k, v] of Object.entries(changes)) {
    if (v === null || v === "") next.delete(k);
    else next.set(k, v);
  }
  return "?" + next;
}

function say(id, text, isError) {
  const el = $(id);
  el.textContent = text;
  el.className = "status" + (isError ? " error" : "");
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

const plural = (n, noun) => n + " " + noun + (n === 1 ? "" : "s");

function renderPager(id, total, perPage) {
  const pager = $(id);
  pager.replaceChildren();
  const pages = Math.max(1, Math.ceil(total / perPage));
  if (pages === 1) return;
  const link = (text, to, rel) => {
    const a = el("a", rel, text);
    a.href = viewUrl({ page: to === 1 ? null : String(to) });
    return a;
  };
  if (page > 1) pager.appendChild(link("← previous", page - 1, "prev"));
  pager.appendChild(el("span", "where", "page " + page + " of " + pages));
  if (page < pages) pager.appendChild(link("next →", page + 1, "next"));
}

function rememberLabels(labels) {
  const list = $("known-labels");
  const known = new Set(Array.from(list.options, (o) => o.value));
  for (const label of labels) {
    if (label && !known.has(label)) {
      known.add(label);
      const option = document.createElement("option");
      option.value = label;
      list.appendChild(option);
    }
  }
}

// ---- duplicates ---------------------------------------------------------------------------

const dupSpace = ["image", "text", "fused"].includes(params.get("space")) ? params.get("space") : "image";
const dup = { generation: null };

// What a pair shows as evidence: each measurement it carries, by name (hash distance,
// similarity, pixel difference, text similarity; "mirrored" when the match needed a mirror
// image), so new evidence appears without a page change.
function pairEvidence(pair) {
  const shown = Object.entries(pair)
    .filter(([k, v]) => typeof v === "number" || (k === "mirrored" && v === true))
    .map(([k, v]) => [k.replace(/_/g, " "), v === true ? "" : Number.isInteger(v) ? String(v) : v.toFixed(3)]);
  return { a: pair.a, b: pair.b, shown };
}

function renderGroup(group) {
  const card = el("article", "group panel");
  card.dataset.group = group.id;
  const head = el("header");
  head.append(el("span", "kind", group.kind), el("code", "gid", group.id),
    el("span", "count", group.items.length + " items"));
  // Group-level numbers the report may carry besides its pairs.
  for (const [k, v] of Object.entries(group)) {
    if (typeof v === "number") head.appendChild(el("span", "extra", k.replace(/_/g, " ") + " " + v.toFixed(3)));
  }
  card.appendChild(head);

  const members = el("div", "members");
  for (const item of group.items) {
    const figure = el("figure", "member");
    figure.dataset.id = item.id;
    figure.appendChild(thumbnail(item.image, item.title || item.id));
    const caption = el("figcaption");
    caption.append(el("div", "title", item.title || item.id), el("div", "id", item.id),
      el("div", "label", item.label || "no label"));
    const keep = el("button", "keep", "Keep this one");
    keep.type = "button";
    keep.addEventListener("click", () => keepOne(group, item.id, keep));
    caption.appendChild(keep);
    figure.appendChild(caption);
    members.appendChild(figure);
  }
  card.appendChild(members);

  const evidence = el("table", "evidence");
  for (const pair of group.pairs || []) {
    const { a, b, shown } = pairEvidence(pair);
    const row = el("tr");
    row.appendChild(el("td", "pair", a + " ↔ " + b));
    for (const [name, value] of shown) row.appendChild(el("td", "", name + " " + value));
    evidence.appendChild(row);
  }
  card.appendChild(evidence);

  const actions = el("div", "actions");
  const dismiss = el("button", "dismiss", "Not duplicates");
  dismiss.type = "button";
  dismiss.addEventListener("click", () => dismissGroup(group, dismiss));
  actions.appendChild(dismiss);
  card.appendChild(actions);
  return card;
}

async function loadDuplicates() {
  $("dup-space").value = dupSpace;
  $("dup-label").value = labelFilter;
  say("dup-status", "loading the duplicates report…");
  const query = new URLSearchParams({
    space: dupSpace,
    offset: String((page - 1) * GROUPS_PER_PAGE),
    limit: String(GROUPS_PER_PAGE),
  });
  if (labelFilter) query.set("label", labelFilter);
  try {
    const data = await api("GET", "/v1/duplicates?" + query);
    dup.generation = data.generation;
    $("dup-groups").replaceChildren(...data.groups.map(renderGroup));
    rememberLabels(data.groups.flatMap((g) => g.items.map((i) => i.label)));
    renderPager("dup-pager", data.total, GROUPS_PER_PAGE);
    say("dup-status", plural(data.total, "group") + (labelFilter ? " with an item labelled " + labelFilter : ""));
  } catch (err) {
    say("dup-status", err.message, true);
  }
}

async function dismissGroup(group, button) {
  button.disabled = true;
  const query = new URLSearchParams({ space: dupSpace });
  if (dup.generation !== null && dup.generation !== undefined) query.set("generation", String(dup.generation));
  try {
    await api("POST", "/v1/duplicates/" + encodeURIComponent(group.id) + "/dismiss?" + query);
    await loadDuplicates();
    say("dup-status", "dismissed " + group.items.map((i) => i.id).join(", ") + " as not duplicates");
  } catch (err) {
    if (err.status === 409) await loadDuplicates();
    say("dup-status", err.message, true);
    button.disabled = false;
  }
}

// "Keep this one" asks once more, then deletes the group's other items.
async function keepOne(group, keptId, button) {
  const others = group.items.map((i) => i.id).filter((id) => id !== keptId);
  if (!button.classList.contains("confirm")) {
    button.classList.add("confirm");
    button.textContent = "Delete " + plural(others.length, "other") + "?";
    return;
  }
  button.disabled = true;
  try {
    for (const id of others) {
      await api("DELETE", "/v1/items/" + encodeURIComponent(id));
    }
    await loadDuplicates();
    say("dup-status", "kept " + keptId + ", deleted " + others.join(", "));
  } catch (err) {
    say("dup-status", err.message, true);
    button.disabled = false;
  }
}

$("dup-form").addEventListener("submit", (e) => {
  e.preventDefault();
  location.search = viewUrl({ space: $("dup-space").value, label: $("dup-label").value.trim(), page: null });
});

// ---- label issues -------------------------------------------------------------------------

function renderIssue(issue) {
  const row = el("tr", "issue");
  row.dataset.id = issue.id;
  const thumbCell = el("td");
  thumbCell.appendChild(thumbnail(issue.image, issue.title || issue.id));
  const item = el("td", "item");
  item.append(el("div", "title", issue.title || issue.id), el("div", "id", issue.id));
  const suggested = el("td", "suggested");
  suggested.append(el("span", "label", issue.suggested_label),
    el("span", "probability", " " + (issue.p_suggested * 100).toFixed(1) + "%"));
  const actionCell = el("td");
  const actions = el("div", "actions");
  actionCell.appendChild(actions);
  const accept = el("button", "accept", "Accept " + issue.suggested_label);
  accept.type = "button";
  accept.addEventListener("click", () =>
    reviewLabel(issue, row, { label: issue.suggested_label, if_label: issue.given_label },
      "relabelled " + issue.given_label + " → " + issue.suggested_label));
  const keep = el("button", "keep-label", "Keep " + issue.given_label);
  keep.type = "button";
  keep.addEventListener("click", () =>
    reviewLabel(issue, row, { keep_label: true, if_label: issue.given_label },
      "kept " + issue.given_label));
  actions.append(accept, keep);
  row.append(thumbCell, item, el("td", "given", issue.given_label), suggested,
    el("td", "score", (issue.score * 100).toFixed(0) + "%"), actionCell);
  return row;
}

async function reviewLabel(issue, row, patch, done) {
  const buttons = row.querySelectorAll("button");
  buttons.forEach((b) => { b.disabled = true; });
  try {
    await api("PATCH", "/v1/items/" + encodeURIComponent(issue.id), patch);
    row.classList.add("done");
    row.querySelector(".actions").replaceChildren(el("span", "outcome", done));
    say("noise-status", issue.id + ": " + done);
  } catch (err) {
    say("noise-status", issue.id + ": " + err.message, true);
    buttons.forEach((b) => { b.disabled = false; });
  }
}

async function loadIssues() {
  $("noise-label").value = labelFilter;
  say("noise-status", "loading the label report…");
  const query = new URLSearchParams({
    offset: String((page - 1) * ISSUES_PER_PAGE),
    limit: String(ISSUES_PER_PAGE),
  });
  if (labelFilter) query.set("label", labelFilter);
  try {
    const data = await api("GET", "/v1/noise?" + query);
    $("noise-rows").replaceChildren(...data.issues.map(renderIssue));
    rememberLabels(data.issues.flatMap((i) => [i.given_label, i.suggested_label]));
    renderPager("noise-pager", data.total, ISSUES_PER_PAGE);
    say("noise-status", plural(data.total, "label issue") + (labelFilter ? " about " + labelFilter : "") +
      " among " + data.labelled_items + " labelled items");
  } catch (err) {
    say("noise-status", err.message, true);
  }
}

$("noise-form").addEventListener("submit", (e) => {
  e.preventDefault();
  location.search = viewUrl({ label: $("noise-label").value.trim(), page: null });
});

// ---- start --------------------------------------------------------------------------------

if (view === "duplicates") loadDuplicates();
else if (view === "labels") loadIssues();
else if (params.get("q")) {
  $("query").value = params.get("q");
  if (["fused", "text", "image"].includes(params.get("space"))) $("space").value = params.get("space");
  $("search-form").requestSubmit();
}
