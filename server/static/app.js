// Trio's page: search by text or image, classify, show results. Talks to the JSON API of the
// server that served it; no external scripts.
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

async function postJson(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: headers({ "Content-Type": "application/json" }),
    body: JSON.stringify(body),
  });
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const message = data && data.error ? data.error.message : response.statusText;
    throw new Error(message + " (" + response.status + ")");
  }
  return data;
}

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

function thumbnail(hit) {
  const box = document.createElement("div");
  box.className = "thumb";
  if (!hit.has_image) return box;
  const img = document.createElement("img");
  img.alt = hit.title || hit.id;
  img.loading = "lazy";
  const url = "/v1/items/" + encodeURIComponent(hit.id) + "/image";
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
    card.appendChild(thumbnail(hit));
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
