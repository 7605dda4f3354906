/* A tiny SVG line chart for the dashboard: several series, gaps where a value was NaN (the
 * first one marked with a red "NaN" line), nice axis ticks, a legend, and a crosshair
 * read-out. No dependency, no network. */
"use strict";

(function () {
  const NS = "http://www.w3.org/2000/svg";
  const COLORS = ["#1f6feb", "#d9480f", "#2f9e44", "#ae3ec9", "#f08c00", "#0c8599", "#e03131", "#5c940d"];
  const PAD = { left: 56, right: 14, top: 12, bottom: 30 };

  function el(name, attrs, text) {
    const node = document.createElementNS(NS, name);
    for (const key in attrs) node.setAttribute(key, attrs[key]);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  /* Round tick positions covering [lo, hi]: steps of 1, 2 or 5 times a power of ten. */
  function ticks(lo, hi, count) {
    if (!(hi > lo)) return [lo];
    const raw = (hi - lo) / Math.max(1, count);
    const power = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw) || raw;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
    return out;
  }

  function format(v) {
    if (v === null || v === undefined || !isFinite(v)) return "NaN";
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(2);
    return +v.toPrecision(4) + "";
  }

  function extent(values) {
    let lo = Infinity, hi = -Infinity;
    for (const v of values) if (v !== null && isFinite(v)) { if (v < lo) lo = v; if (v > hi) hi = v; }
    if (lo === Infinity) return [0, 1];
    if (lo === hi) { const d = Math.abs(lo) * 0.1 || 1; return [lo - d, hi + d]; }
    const pad = (hi - lo) * 0.05;
    return [lo - pad, hi + pad];
  }

  /* Draw `spec` = {series: [{name, x, y}], xLabel} into `box` (replacing what was there). */
  function render(box, spec) {
    const width = Math.max(280, box.clientWidth || 560), height = Math.round(Math.min(300, Math.max(190, width * 0.42)));
    const all = spec.series;
    const xs = extent(all.flatMap((s) => s.x)), ys = extent(all.flatMap((s) => s.y));
    if (all.every((s) => s.x.length <= 1)) { xs[0] -= 1; xs[1] += 1; }
    const plotW = width - PAD.left - PAD.right, plotH = height - PAD.top - PAD.bottom;
    const sx = (x) => PAD.left + ((x - xs[0]) / (xs[1] - xs[0])) * plotW;
    const sy = (y) => PAD.top + (1 - (y - ys[0]) / (ys[1] - ys[0])) * plotH;
    const total = all.reduce((n, s) => n + s.x.length, 0);
    const svg = el("svg", { viewBox: `0 0 ${width} ${height}`, width, height, class: "chart-svg", "data-points": total });

    for (const t of ticks(ys[0], ys[1], 5)) {
      svg.appendChild(el("line", { x1: PAD.left, x2: width - PAD.right, y1: sy(t), y2: sy(t), class: "grid" }));
      svg.appendChild(el("text", { x: PAD.left - 6, y: sy(t) + 4, class: "tick", "text-anchor": "end" }, format(t)));
    }
    for (const t of ticks(xs[0], xs[1], Math.max(2, Math.floor(plotW / 80)))) {
      svg.appendChild(el("line", { x1: sx(t), x2: sx(t), y1: PAD.top, y2: PAD.top + plotH, class: "grid" }));
      svg.appendChild(el("text", { x: sx(t), y: height - 12, class: "tick", "text-anchor": "middle" }, format(t)));
    }
    svg.appendChild(el("text", { x: width - PAD.right, y: height - 1, class: "axis-label", "text-anchor": "end" }, spec.xLabel || ""));

    all.forEach((s, i) => {
      const color = COLORS[i % COLORS.length];
      let path = "", pen = false;
      for (let k = 0; k < s.x.length; k++) {
        const y = s.y[k];
        if (y === null || !isFinite(y)) { pen = false; continue; }
        path += (pen ? "L" : "M") + sx(s.x[k]).toFixed(1) + " " + sy(y).toFixed(1);
        pen = true;
      }
      svg.appendChild(el("path", { d: path, stroke: color, class: "line", "data-series": s.name }));
      const bad = s.y.findIndex((y) => y === null || !isFinite(y));
      if (bad >= 0) {  // where the series first went NaN/Inf
        const x = sx(s.x[bad]).toFixed(1);
        svg.appendChild(el("line", { x1: x, x2: x, y1: PAD.top, y2: PAD.top + plotH, class: "nan-line", "data-nan": s.x[bad] }));
        const left = +x > width * 0.75;  // near the right edge: the label goes on its left
        svg.appendChild(el("text", { x: left ? +x - 4 : +x + 4, y: PAD.top + 12, class: "nan-label", "text-anchor": left ? "end" : "start" }, `NaN/Inf at ${format(s.x[bad])}`));
      }
      if (s.x.length <= 40) {  // few points (per-epoch series): show them as dots
        s.x.forEach((x, k) => {
          if (s.y[k] !== null && isFinite(s.y[k])) svg.appendChild(el("circle", { cx: sx(x), cy: sy(s.y[k]), r: 2.6, fill: color }));
        });
      }
    });

    const cross = el("line", { y1: PAD.top, y2: PAD.top + plotH, class: "cross", visibility: "hidden" });
    svg.appendChild(cross);
    const legend = document.createElement("div");
    legend.className = "legend";
    const readout = document.createElement("div");
    readout.className = "readout";
    all.forEach((s, i) => {
      const item = document.createElement("span");
      const swatch = document.createElement("i");
      swatch.style.background = COLORS[i % COLORS.length];  // CSSOM, not an inline style attribute (CSP)
      item.append(swatch, s.name);
      legend.appendChild(item);
    });

    svg.addEventListener("mousemove", (ev) => {
      const rect = svg.getBoundingClientRect();
      const px = ((ev.clientX - rect.left) / rect.width) * width;
      const x = xs[0] + ((px - PAD.left) / plotW) * (xs[1] - xs[0]);
      cross.setAttribute("x1", px); cross.setAttribute("x2", px); cross.setAttribute("visibility", "visible");
      readout.textContent = `${spec.xLabel || "x"} ${format(x)}: ` + all.map((s) => {
        let best = -1;
        for (let k = 0; k < s.x.length; k++) if (best < 0 || Math.abs(s.x[k] - x) < Math.abs(s.x[best] - x)) best = k;
        return best < 0 ? "" : `${s.name} ${format(s.y[best])}`;
      }).join(" · ");
    });
    svg.addEventListener("mouseleave", () => { cross.setAttribute("visibility", "hidden"); readout.textContent = ""; });

    box.replaceChildren(svg, legend, readout);
  }

  window.AfsChart = { render: render, format: format };
})();
