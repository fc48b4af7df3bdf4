// The per-patient view: draws the chosen patient's summary, modality contributions, top attributions
// (table) and their waterfall (SVG) from the JSON embedded above. No network, no libraries.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("patient-data").textContent);
  var select = document.getElementById("patient-select");
  var SVG = "http://www.w3.org/2000/svg";
  function fmt(v, digits) {
    if (v === null || v === undefined || (typeof v === "number" && !isFinite(v))) { return "n/a"; }
    if (typeof v !== "number") { return String(v); }
    return v.toPrecision(digits || 3);
  }
  function clear(node) { while (node.firstChild) { node.removeChild(node.firstChild); } }
  function row(tbody, cells, numeric) {
    var tr = document.createElement("tr");
    cells.forEach(function (text, i) {
      var td = document.createElement("td");
      if (numeric[i]) { td.className = "num"; }
      td.textContent = text;
      tr.appendChild(td);
    });
    tbody.appendChild(tr);
  }
  function svgEl(name, attrs, text) {
    var el = document.createElementNS(SVG, name);
    Object.keys(attrs).forEach(function (k) { el.setAttribute(k, attrs[k]); });
    if (text !== undefined) { el.textContent = text; }
    return el;
  }
  function waterfall(p) {
    var svg = document.getElementById("patient-waterfall");
    clear(svg);
    var steps = p.top.map(function (t) { return { label: t[1], value: t[3], title: t[0] + " " + t[1] + " = " + fmt(t[2]) }; });
    steps.push({ label: "other features", value: p.rest, title: "sum of the remaining attributions" });
    var left = 170, width = 560, right = 40, barH = 18, gap = 6, top = 8;
    var height = top + steps.length * (barH + gap) + 30;
    svg.setAttribute("height", height);
    svg.setAttribute("viewBox", "0 0 " + width + " " + height);
    var run = 0, lo = 0, hi = 0;
    steps.forEach(function (s) { s.start = run; run += (isFinite(s.value) ? s.value : 0); s.end = run; lo = Math.min(lo, s.start, s.end); hi = Math.max(hi, s.start, s.end); });
    if (hi - lo === 0) { hi = lo + 1; }
    var scale = function (v) { return left + (v - lo) / (hi - lo) * (width - left - right); };
    svg.appendChild(svgEl("line", { x1: scale(0), y1: 0, x2: scale(0), y2: height - 24, stroke: "#6b7580" }));
    steps.forEach(function (s, i) {
      var y = top + i * (barH + gap);
      var x0 = scale(Math.min(s.start, s.end)), x1 = scale(Math.max(s.start, s.end));
      var rect = svgEl("rect", { x: x0, y: y, width: Math.max(x1 - x0, 1), height: barH, "class": s.value >= 0 ? "pos" : "neg" });
      rect.appendChild(svgEl("title", {}, s.title + ": attribution " + fmt(s.value)));
      svg.appendChild(rect);
      svg.appendChild(svgEl("text", { x: left - 6, y: y + barH - 5, "text-anchor": "end" }, s.label.length > 26 ? s.label.slice(0, 25) + "\u2026" : s.label));
    });
    svg.appendChild(svgEl("text", { x: scale(run), y: height - 8, "text-anchor": "middle" }, "sum " + fmt(run)));
  }
  function show(id) {
    var p = data.patients[id];
    if (!p) { return; }
    document.getElementById("patient-id").textContent = id;
    var dl = document.getElementById("patient-summary");
    clear(dl);
    [["fold", p.fold], ["predicted risk (log relative hazard)", fmt(p.risk)], ["cohort percentile", fmt(p.percentile)],
     ["risk group", p.risk_group], ["response probability", fmt(p.response_prob)], ["convergence delta", fmt(p.delta)]
    ].forEach(function (kv) {
      dl.appendChild(Object.assign(document.createElement("dt"), { textContent: kv[0] }));
      dl.appendChild(Object.assign(document.createElement("dd"), { textContent: kv[1] === null || kv[1] === undefined ? "n/a" : String(kv[1]) }));
    });
    var mods = document.querySelector("#patient-modalities tbody");
    clear(mods);
    data.modalities.forEach(function (m) {
      var cells = [m, fmt(p.contrib[m])];
      if (data.has_groups) { cells.push(fmt(p.groups[m])); }
      row(mods, cells, [false, true, true]);
    });
    var attrs = document.querySelector("#patient-attributions tbody");
    clear(attrs);
    p.top.forEach(function (t) { row(attrs, [t[0], t[1], fmt(t[2], 4), fmt(t[3])], [false, false, true, true]); });
    waterfall(p);
  }
  select.addEventListener("change", function () { show(select.value); });
  show(select.value);
})();
