"use strict";
(async () => {
  const { api, card, el, status, thumb, header } = imgfeat;
  const $ = (s) => document.querySelector(s);
  const st = $("#status");
  let current = null;  // {kind, value, offset}

  function params(offset) {
    const p = new URLSearchParams({ k: $("#k").value, offset });
    if ($("#label").value) p.set("label", $("#label").value);
    return p;
  }
  async function run(query, offset = 0) {
    current = { ...query, offset };
    status(st, "searching…");
    try {
      let res;
      if (query.kind === "id") res = await api(`/api/neighbours/${encodeURIComponent(query.value)}?${params(offset)}`);
      else if (query.kind === "text") res = await api(`/api/search/text?q=${encodeURIComponent(query.value)}&${params(offset)}`);
      else res = await api(`/api/search/image?${params(offset)}`, { method: "POST", body: query.value,
                            headers: { "Content-Type": query.value.type || "application/octet-stream" } });
      if (offset === 0) $("#results").replaceChildren();
      for (const item of res.results) $("#results").append(card(item, (it) => byId(it.id)));
      $("#more").hidden = !res.more;
      status(st, `${offset + res.results.length} results`);
    } catch (e) {
      status(st, e.message, true);
    }
  }
  function showQuery(node) { $("#query").replaceChildren(el("span", {}, "Query: "), node); }
  function byId(id) {
    $("#q-id").value = id;
    showQuery(el("span", {}, el("img", { src: thumb(id), alt: id }), " ", id));
    history.replaceState(null, "", `/?id=${encodeURIComponent(id)}`);
    return run({ kind: "id", value: id });
  }
  function byFile(file) {
    showQuery(el("span", {}, el("img", { src: URL.createObjectURL(file), alt: file.name }), " ", file.name));
    return run({ kind: "image", value: file });
  }

  $("#query-form").addEventListener("submit", (e) => {
    e.preventDefault();
    if ($("#q-text").value.trim() && !$("#q-text").hidden) {
      showQuery(el("span", {}, `“${$("#q-text").value.trim()}”`));
      run({ kind: "text", value: $("#q-text").value.trim() });
    } else if ($("#q-id").value.trim()) byId($("#q-id").value.trim());
  });
  $("#q-file").addEventListener("change", (e) => e.target.files[0] && byFile(e.target.files[0]));
  const drop = $("#drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); if (e.dataTransfer.files[0]) byFile(e.dataTransfer.files[0]); });
  $("#more").addEventListener("click", () => run(current, current.offset + Number($("#k").value)));

  try {
    const info = await header("search");
    $("#q-text").hidden = !info.text;
    if (info.labels.length) {
      $("#label-box").hidden = false;
      for (const l of info.labels) $("#label").append(el("option", { value: l }, l));
    }
    const n = Math.min(info.count, 24), step = Math.max(1, Math.floor(info.count / n));
    const rows = Array.from({ length: n }, (_, i) => i * step);
    const sample = await api("/api/rows", { method: "POST", headers: { "Content-Type": "application/json" },
                                            body: JSON.stringify({ rows }) });
    for (const item of sample.items) $("#browse").append(card(item, (it) => byId(it.id)));
    const id = new URLSearchParams(location.search).get("id");
    if (id) byId(id);
    document.body.dataset.ready = "1";
  } catch (e) {
    status(st, e.message, true);
  }
})();
