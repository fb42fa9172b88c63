// Shared by the pages: API calls with JSON errors, thumbnails, result cards, the header.
"use strict";
const imgfeat = (() => {
  async function api(path, opts = {}) {
    const resp = await fetch(path, { credentials: "same-origin", ...opts });
    const type = resp.headers.get("content-type") || "";
    const body = type.includes("application/json") ? await resp.json() : await resp.text();
    if (!resp.ok) {
      const msg = body && body.error ? body.error : `HTTP ${resp.status}`;
      throw new Error(msg);
    }
    return body;
  }
  async function binary(path, Type) {
    const resp = await fetch(path, { credentials: "same-origin" });
    if (!resp.ok) throw new Error(`HTTP ${resp.status} for ${path}`);
    return new Type(await resp.arrayBuffer());
  }
  const thumb = (id) => "/thumb/" + encodeURIComponent(id);
  function el(tag, attrs = {}, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") e.className = v; else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
    }
    for (const c of children) e.append(c);
    return e;
  }
  function card(item, onclick) {
    const meta = el("div", { class: "meta" }, el("span", { class: "id", title: item.id }, item.id));
    if (item.score !== undefined) meta.append(el("span", { class: "score" }, item.score.toFixed(3)));
    const c = el("div", { class: "card", "data-id": item.id, title: item.id },
      el("img", { src: thumb(item.id), loading: "lazy", alt: item.id }), meta);
    if (item.label) c.append(el("div", { class: "label" }, item.label));
    if (onclick) c.addEventListener("click", () => onclick(item));
    return c;
  }
  function status(node, text, error = false) {
    node.textContent = text;
    node.classList.toggle("error", error);
  }
  const PAGES = [["search", "/", "Search"], ["map", "/map", "Map"], ["duplicates", "/duplicates", "Duplicates"],
                 ["audit", "/audit", "Audit"]];
  async function header(active) {
    document.querySelector("header").replaceChildren(el("span", { class: "brand" }, "imgfeat"),
      el("nav", {}, ...PAGES.map(([page, href, text]) => el("a", { href, class: page === active ? "active" : "" }, text))),
      el("span", { class: "info" }));
    const info = await api("/api/info");
    document.querySelector("header .info").textContent =
      `${info.count.toLocaleString()} vectors · ${info.dim}-d · ${info.model || "features file"} · index ${info.index}`;
    return info;
  }
  return { api, binary, thumb, el, card, status, header };
})();
