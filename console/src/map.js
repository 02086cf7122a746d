// The world map: land (Natural Earth, from world-atlas), regions as markers sized by GPUs
// and coloured by state, client areas with arcs to the regions serving them (thickness by
// request rate), and the snapshot's age. Elements are kept per key and only their changed
// attributes are set on each update, so a fleet of many regions redraws cheaply.

import { geoNaturalEarth1, geoPath, geoGraticule10 } from "d3-geo";
import { feature } from "topojson-client";
import land110m from "world-atlas/land-110m.json";
import { colourOf, el, setAttr, svg } from "./util.js";

const WIDTH = 960;
const HEIGHT = 500;

export class WorldMap {
  constructor(onRegion) {
    this.onRegion = onRegion;
    this.projection = geoNaturalEarth1().fitExtent(
      [
        [8, 8],
        [WIDTH - 8, HEIGHT - 8],
      ],
      { type: "Sphere" },
    );
    this.path = geoPath(this.projection);
    this.root = svg("svg", {
      viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
      class: "world",
      role: "img",
      "aria-label": "world map of regions and client areas",
    });
    this.root.append(
      svg("path", { class: "sphere", d: this.path({ type: "Sphere" }) }),
      svg("path", { class: "graticule", d: this.path(geoGraticule10()) }),
      svg("path", { class: "land", d: this.path(feature(land110m, land110m.objects.land)) }),
    );
    this.arcLayer = svg("g", { class: "arcs" });
    this.areaLayer = svg("g", { class: "areas" });
    this.regionLayer = svg("g", { class: "regions" });
    this.root.append(this.arcLayer, this.areaLayer, this.regionLayer);
    this.markers = new Map();
    this.arcs = new Map();
    this.areas = new Map();
    this.age = el("span", { class: "age", id: "snapshot-age" }, "no snapshot yet");
    this.legend = el(
      "div",
      { class: "legend" },
      ["healthy", "degraded", "draining", "down"].map((s) =>
        el("span", {}, el("i", { class: `state-${s}` }), s),
      ),
    );
    this.node = el("section", { class: "map" }, this.root, el("div", { class: "map-foot" }, this.legend, this.age));
  }

  update(state) {
    const snap = state.snapshot;
    this.age.textContent = snap.version
      ? `snapshot v${snap.version}, ${snap.age_s.toFixed(1)} s old · ${state.routers} ${state.routers === 1 ? "router" : "routers"} reporting`
      : "no routing snapshot yet";
    this.age.classList.toggle("stale", snap.age_s !== null && snap.age_s > 15);
    this.#regions(state.regions);
    this.#traffic(state.areas, new Map(state.regions.map((r) => [r.name, r])));
  }

  #regions(regions) {
    const seen = new Set();
    for (const r of regions) {
      seen.add(r.name);
      let m = this.markers.get(r.name);
      if (!m) {
        const circle = svg("circle", { class: "region", "data-region": r.name, tabindex: 0 });
        const title = svg("title");
        const label = svg("text", { class: "region-label" });
        circle.append(title);
        circle.addEventListener("click", () => this.onRegion(r.name));
        circle.addEventListener("keydown", (e) => e.key === "Enter" && this.onRegion(r.name));
        m = { circle, title, label };
        this.regionLayer.append(circle, label);
        this.markers.set(r.name, m);
      }
      const [x, y] = this.projection([r.lon, r.lat]);
      setAttr(m.circle, "cx", x.toFixed(1));
      setAttr(m.circle, "cy", y.toFixed(1));
      setAttr(m.circle, "r", (4 + 2.2 * Math.sqrt(r.gpus_total || 0)).toFixed(1));
      setAttr(m.circle, "fill", colourOf(r.state));
      setAttr(m.circle, "data-state", r.state);
      setAttr(m.label, "x", (x + 8).toFixed(1));
      setAttr(m.label, "y", (y - 8).toFixed(1));
      if (m.label.textContent !== r.name) m.label.textContent = r.name;
      const tip = `${r.name}: ${r.state} · ${r.gpus_healthy}/${r.gpus_total} GPUs · ${r.workers_total} workers · queue ${r.queue}`;
      if (m.title.textContent !== tip) m.title.textContent = tip;
    }
    for (const [name, m] of this.markers) {
      if (!seen.has(name)) {
        m.circle.remove();
        m.label.remove();
        this.markers.delete(name);
      }
    }
  }

  #traffic(areas, regions) {
    const seenAreas = new Set();
    const seenArcs = new Set();
    for (const a of areas) {
      const key = `${a.lat},${a.lon}`;
      seenAreas.add(key);
      let dot = this.areas.get(key);
      if (!dot) {
        dot = svg("circle", { class: "area" });
        dot.append(svg("title"));
        this.areaLayer.append(dot);
        this.areas.set(key, dot);
      }
      const [x, y] = this.projection([a.lon, a.lat]);
      setAttr(dot, "cx", x.toFixed(1));
      setAttr(dot, "cy", y.toFixed(1));
      setAttr(dot, "r", Math.min(8, 2 + 0.4 * Math.sqrt(a.rps)).toFixed(1));
      dot.firstChild.textContent = `clients at ${a.lat}, ${a.lon}: ${a.rps.toFixed(1)} req/s`;
      for (const f of a.flows) {
        const region = regions.get(f.region);
        if (!region || f.rps <= 0) continue;
        const arcKey = `${key}>${f.region}`;
        seenArcs.add(arcKey);
        let arc = this.arcs.get(arcKey);
        if (!arc) {
          arc = svg("path", { class: "arc", "data-region": f.region });
          arc.append(svg("title"));
          this.arcLayer.append(arc);
          this.arcs.set(arcKey, arc);
          arc.setAttribute(
            "d",
            this.path({ type: "LineString", coordinates: [[a.lon, a.lat], [region.lon, region.lat]] }),
          );
        }
        setAttr(arc, "stroke-width", Math.min(12, 0.75 + 1.2 * Math.sqrt(f.rps)).toFixed(2));
        setAttr(arc, "stroke", colourOf(region.state));
        arc.firstChild.textContent = `${f.rps.toFixed(1)} req/s to ${f.region}`;
      }
    }
    for (const [key, node] of this.areas) if (!seenAreas.has(key)) (node.remove(), this.areas.delete(key));
    for (const [key, node] of this.arcs) if (!seenArcs.has(key)) (node.remove(), this.arcs.delete(key));
  }
}
