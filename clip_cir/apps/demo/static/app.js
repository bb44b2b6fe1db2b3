// clip-cir demo page: everything goes through the JSON API (see clip_cir/demo_app.py).
// Names and captions only ever reach the DOM as textContent or attribute values, never as HTML.
"use strict";

const PER_PAGE = 48;
const $ = (id) => document.getElementById(id);

const state = {
  reference: null,   // {kind: "gallery", name} or {kind: "upload", file, url}
  page: 1,
  pages: 1,
  filter: "",
  turn: 0,
  attributes: {},    // {name: [values]} when the gallery has attribute labels
};

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key in node) node[key] = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function setStatus(message, isError = false) {
  $("status").textContent = message;
  $("status").classList.toggle("error", isError);
}

async function api(url, options) {
  const response = await fetch(url, options);
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON */ }
  if (!response.ok) throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
  return body;
}

function imageUrl(name) {
  return "/images/" + name.split("/").map(encodeURIComponent).join("/");
}

// ---- setup info -------------------------------------------------------------------------
async function loadInfo() {
  const info = await api("/api/info");
  $("info-model").textContent = info.model;
  $("info-combining").textContent = info.combining;
  $("info-gallery").textContent = `${info.dataset} ${info.split} · ${info.gallery_size.toLocaleString()} images`;
  $("info-search").textContent = info.search;
  $("k").value = info.default_k;
  $("k").max = info.max_k;
  if (info.exclude_reference) $("results-note").textContent = "(reference excluded, as in the dataset's protocol)";
  state.attributes = info.attributes || {};
  const names = Object.keys(state.attributes);
  $("attribute-row").hidden = names.length === 0;
  $("attribute").append(...names.map((name) => el("option", {value: name, textContent: name})));
}

// ---- attribute search (a gallery with attribute labels): set one attribute to one value ----------
function fillValues() {
  const values = state.attributes[$("attribute").value] || [];
  $("value").replaceChildren(el("option", {value: "", textContent: "value…"}),
                             ...values.map((v) => el("option", {value: v, textContent: v})));
}

$("attribute").addEventListener("change", fillValues);
$("value").addEventListener("change", () => {
  if ($("value").value) $("search-form").requestSubmit();
});
$("caption").addEventListener("input", () => { $("attribute").value = ""; fillValues(); });

// ---- reference ----------------------------------------------------------------------------
function setReference(reference) {
  if (state.reference && state.reference.kind === "upload") URL.revokeObjectURL(state.reference.url);
  state.reference = reference;
  const figure = $("reference");
  figure.classList.remove("empty");
  if (reference.kind === "gallery") {
    $("reference-image").src = imageUrl(reference.name);
    $("reference-name").textContent = reference.name;
    $("upload").value = "";
  } else {
    $("reference-image").src = reference.url;
    $("reference-name").textContent = `uploaded: ${reference.file.name}`;
  }
  figure.dataset.name = reference.kind === "gallery" ? reference.name : "";
  for (const item of document.querySelectorAll("#gallery li")) {
    item.classList.toggle("selected", reference.kind === "gallery" && item.dataset.name === reference.name);
  }
}

function pickGalleryImage(name) {
  setReference({kind: "gallery", name});
  $("caption").value = "";
  $("caption").focus();
  setStatus("Now describe how the target differs from this image.");
}

$("upload").addEventListener("change", () => {
  const file = $("upload").files[0];
  if (!file) return;
  setReference({kind: "upload", file, url: URL.createObjectURL(file)});
  $("caption").focus();
  setStatus("Now describe how the target differs from the uploaded image.");
});

// ---- search -------------------------------------------------------------------------------
function resultCard(hit) {
  const button = el("button", {type: "button", title: `use ${hit.name} as the reference`}, [
    el("span", {className: "rank", textContent: `#${hit.rank}`}),
    el("img", {src: hit.url, alt: hit.name, loading: "lazy"}),
    el("span", {className: "name", textContent: hit.name}),
    el("span", {className: "score", textContent: `score ${hit.score.toFixed(4)}`}),
  ]);
  button.addEventListener("click", () => pickGalleryImage(hit.name));
  return el("li", {dataset: {name: hit.name, score: String(hit.score), rank: String(hit.rank)}}, [button]);
}

function addTurn(reference, caption, top) {
  $("history-title").hidden = false;
  const label = reference.kind === "gallery" ? reference.name : `uploaded ${reference.file.name}`;
  const img = el("img", {src: reference.kind === "gallery" ? imageUrl(reference.name) : reference.url, alt: ""});
  $("history").append(el("li", {}, [img, `${label} + “${caption}”`, top ? ` → ${top}` : ""]));
}

async function search(event) {
  event.preventDefault();
  const caption = $("caption").value.trim();
  const change = $("attribute").value && $("value").value
    ? {attribute: $("attribute").value, value: $("value").value} : {caption};
  const k = Number($("k").value);
  if (!state.reference) return setStatus("Pick a reference image first.", true);
  if (!caption && !change.attribute) return setStatus("Type a caption: how should the reference change?", true);
  const results = $("results");
  results.dataset.state = "loading";
  $("search-button").disabled = true;
  setStatus("Searching…");
  const reference = state.reference;
  try {
    let options;
    if (reference.kind === "gallery") {
      options = {method: "POST", headers: {"Content-Type": "application/json"},
                 body: JSON.stringify({reference: reference.name, ...change, k})};
    } else {
      const form = new FormData();
      form.append("image", reference.file);
      for (const [key, value] of Object.entries(change)) form.append(key, value);
      form.append("k", String(k));
      options = {method: "POST", body: form};
    }
    const answer = await api("/api/search", options);
    results.replaceChildren(...answer.results.map(resultCard));
    state.turn += 1;
    results.dataset.turn = String(state.turn);
    const said = answer.caption ?? `${answer.attribute}: ${answer.value}`;
    results.dataset.caption = said;
    results.dataset.reference = answer.reference || "";
    results.dataset.state = "done";
    addTurn(reference, said, answer.results.length ? answer.results[0].name : "");
    setStatus(`${answer.results.length} results in ${answer.elapsed_ms.toFixed(0)} ms.`);
  } catch (error) {
    results.dataset.state = "error";
    setStatus(error.message, true);
  } finally {
    $("search-button").disabled = false;
  }
}

$("search-form").addEventListener("submit", search);

// ---- gallery ------------------------------------------------------------------------------
async function loadGallery() {
  const query = new URLSearchParams({page: state.page, per_page: PER_PAGE, filter: state.filter});
  const gallery = $("gallery");
  gallery.dataset.state = "loading";
  try {
    const answer = await api(`/api/gallery?${query}`);
    state.pages = answer.pages;
    const items = answer.items.map((item) => {
      const button = el("button", {type: "button", title: `use ${item.name} as the reference`}, [
        el("img", {src: item.url, alt: item.name, loading: "lazy"}),
        el("span", {className: "name", textContent: item.name}),
      ]);
      button.addEventListener("click", () => pickGalleryImage(item.name));
      const selected = state.reference && state.reference.kind === "gallery" && state.reference.name === item.name;
      return el("li", {dataset: {name: item.name}, className: selected ? "selected" : ""}, [button]);
    });
    gallery.replaceChildren(...(items.length ? items : [el("li", {className: "empty-note",
      textContent: "No image name matches this filter."})]));
    $("gallery-count").textContent = `${answer.total.toLocaleString()} ${state.filter ? "matching" : "images"}`;
    $("page-label").textContent = `page ${answer.page} of ${answer.pages}`;
    $("prev").disabled = answer.page <= 1;
    $("next").disabled = answer.page >= answer.pages;
    gallery.dataset.state = "done";
  } catch (error) {
    gallery.dataset.state = "error";
    setStatus(error.message, true);
  }
}

let filterTimer = null;
$("filter").addEventListener("input", () => {
  clearTimeout(filterTimer);
  filterTimer = setTimeout(() => {
    state.filter = $("filter").value.trim();
    state.page = 1;
    loadGallery();
  }, 200);
});
$("prev").addEventListener("click", () => { if (state.page > 1) { state.page -= 1; loadGallery(); } });
$("next").addEventListener("click", () => { if (state.page < state.pages) { state.page += 1; loadGallery(); } });

loadInfo().catch((error) => setStatus(`cannot reach the server: ${error.message}`, true));
loadGallery();
