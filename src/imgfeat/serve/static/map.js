// The map: every vector as a WebGL point (regl-scatterplot), geometry fetched once as binary arrays.
import createPubSub from "./vendor/pub-sub-es.js";

const { api, binary, card, el, status, thumb, header } = imgfeat;
const $ = (s) => document.querySelector(s);
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf",
  "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5"];
const UNLABELLED = "#7f7f7f";

function loadScript(src) {
  return new Promise((resolve, reject) => {
    const s = document.createElement("script");
    s.src = src; s.onload = resolve; s.onerror = () => reject(new Error(`could not load ${src}`));
    document.head.append(s);
  });
}

async function main() {
  const t0 = performance.now();
  window.createPubSub = createPubSub;  // the UMD build of regl-scatterplot expects these two globals
  await loadScript("/static/vendor/regl.min.js");
  await loadScript("/static/vendor/regl-scatterplot.min.js");
  await header("map");
  let meta = await api("/api/map");
  while (meta.status === "computing") {  // made once per collection: say what is being computed, ask again
    status($("#status"), `making the map: ${meta.step} (step ${meta.done + 1} of ${meta.total}, ` +
      `${Math.round(meta.elapsed_s)} s so far)…`);
    await new Promise((r) => setTimeout(r, 1000));
    meta = await api("/api/map");
  }
  const [xy, rows, codes] = await Promise.all([binary(meta.xy, Float32Array), binary(meta.rows, Int32Array),
                                               binary(meta.codes, Uint16Array)]);
  const n = meta.count;
  const x = new Float32Array(n), y = new Float32Array(n), z = new Float32Array(n);
  let xMax = 1e-9, yMax = 1e-9;
  for (let i = 0; i < n; i++) {
    z[i] = codes[i];
    xMax = Math.max(xMax, Math.abs(xy[2 * i])); yMax = Math.max(yMax, Math.abs(xy[2 * i + 1]));
  }
  // regl-scatterplot shows y in [-1, 1] over the canvas's height and x in [-w/h, w/h] over its width: scale the map
  // (centred, aspect kept) so that its widest side fits whatever the canvas's shape, with a margin
  function fit(w, h) {
    const s = 0.95 * Math.min((w / h) / xMax, 1 / yMax);
    for (let i = 0; i < n; i++) { x[i] = xy[2 * i] * s; y[i] = xy[2 * i + 1] * s; }
  }
  const colours = [UNLABELLED, ...meta.labels.map((_, j) => PALETTE[j % PALETTE.length])];
  $("#legend").replaceChildren(...meta.labels.map((l, j) => el("span", { style: `--c:${colours[j + 1]}` }, l)));

  const canvas = $("#map-canvas");
  const { width, height } = canvas.getBoundingClientRect();
  const scatterplot = window.createScatterplot.default({
    canvas, width, height, backgroundColor: "#ffffff",
    pointSize: n > 300000 ? 2 : n > 30000 ? 3 : 6, opacity: n > 300000 ? 0.6 : 0.85,
    pointColor: colours, colorBy: "valueA", lassoColor: "#2f6fdf", lassoMinDelay: 0, lassoMinDist: 2,
    pointColorHover: "#000000", pointSizeSelected: 2,
    // the spatial-index worker of the UMD build fails ("l is not defined") on large inputs: build it here
    spatialIndexUseWorker: false,
  });
  fit(width, height);
  await scatterplot.draw({ x, y, valueA: z }, { zDataType: "categorical" });
  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  window.imgfeatMap = { ready: true, points: n, paintMs: performance.now() - t0, scatterplot };
  status($("#status"), `${n.toLocaleString()} points (${meta.method}) in ${Math.round(performance.now() - t0)} ms`);
  document.body.dataset.ready = "1";

  const tip = $("#tooltip");
  let hoverToken = 0;
  scatterplot.subscribe("pointOver", async (i) => {
    const token = ++hoverToken;
    const res = await api("/api/rows", { method: "POST", headers: { "Content-Type": "application/json" },
                                         body: JSON.stringify({ rows: [rows[i]] }) });
    if (token !== hoverToken) return;
    const it = res.items[0];
    const [px, py] = scatterplot.getScreenPosition(i) || [0, 0];
    tip.replaceChildren(el("img", { src: thumb(it.id), alt: it.id }), el("div", {}, it.id + (it.label ? ` · ${it.label}` : "")));
    tip.style.left = `${Math.min(px + 12, width - 150)}px`; tip.style.top = `${Math.min(py + 12, height - 160)}px`;
    tip.style.display = "block";
  });
  scatterplot.subscribe("pointOut", () => { hoverToken++; tip.style.display = "none"; });

  let selected = new Int32Array(0);
  scatterplot.subscribe("select", async ({ points }) => {
    selected = Int32Array.from(points, (i) => rows[i]);
    $("#sel-count").textContent = `${selected.length.toLocaleString()} selected`;
    $("#sel-download").hidden = selected.length === 0;
    const res = await api("/api/rows?limit=60", { method: "POST", headers: { "Content-Type": "application/octet-stream" },
                                                 body: selected.buffer });
    $("#sel-items").replaceChildren(...res.items.map((it) => card(it, (x) => { location.href = `/?id=${encodeURIComponent(x.id)}`; })));
  });
  scatterplot.subscribe("deselect", () => {
    selected = new Int32Array(0);
    $("#sel-count").textContent = "Nothing selected"; $("#sel-download").hidden = true; $("#sel-items").replaceChildren();
  });
  $("#sel-download").addEventListener("click", async () => {
    const resp = await fetch("/api/rows?format=txt", { method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/octet-stream" }, body: selected.buffer });
    const a = el("a", { href: URL.createObjectURL(await resp.blob()), download: "selection.txt" });
    document.body.append(a); a.click(); a.remove();
  });
  for (const [id, mode] of [["#mode-pan", "panZoom"], ["#mode-lasso", "lasso"]]) {
    $(id).addEventListener("click", () => {
      scatterplot.set({ mouseMode: mode });
      $("#mode-pan").classList.toggle("on", mode === "panZoom"); $("#mode-lasso").classList.toggle("on", mode === "lasso");
    });
  }
  let shape = width / height;
  new ResizeObserver(async () => {
    const r = canvas.getBoundingClientRect();
    if (!r.width || !r.height) return;
    scatterplot.set({ width: r.width, height: r.height });
    if (Math.abs(r.width / r.height - shape) > 0.01) {  // another shape: fit the map to it again
      shape = r.width / r.height;
      fit(r.width, r.height);
      await scatterplot.draw({ x, y, valueA: z }, { zDataType: "categorical", preventFilterReset: true });
    }
  }).observe($("#map-wrap"));
}

main().catch((e) => { status($("#status"), e.message, true); window.imgfeatMap = { ready: false, error: e.message }; });
