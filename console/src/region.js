// A region's page: state, GPUs and their health, workers, charts of queue depth, latency
// and time to first token over the last minutes, and (for an admin) drain and undrain.

import uPlot from "uplot";
import { call, session } from "./api.js";
import { badge, bytes, el, fill, num, table } from "./util.js";

const WINDOW_S = 300;

function chart(title, series, colours) {
  const opts = {
    title,
    width: 460,
    height: 180,
    scales: { x: { time: true } },
    series: [{}, ...series.map((label, i) => ({ label, stroke: colours[i], width: 1.5 }))],
    axes: [{}, { size: 50 }],
    legend: { live: false },
  };
  return opts;
}

export class RegionPage {
  constructor(name) {
    this.name = name;
    this.data = { t: [], queue: [], p50: [], p99: [], ttft: [] };
    this.header = el("div", { class: "region-head" });
    this.actions = el("div", { class: "actions" });
    this.message = el("p", { class: "message", role: "status" });
    this.gpus = el("div");
    this.workers = el("div");
    this.charts = el("div", { class: "charts" });
    this.node = el(
      "section",
      { class: "region-page", "data-region": name },
      el("p", {}, el("a", { href: "#/" }, "← map")),
      this.header,
      this.actions,
      this.message,
      this.charts,
      el("h3", {}, "GPUs"),
      this.gpus,
      el("h3", {}, "Workers"),
      this.workers,
    );
    this.queueChart = null;
    this.latencyChart = null;
    this.lastSample = 0;
    this.#history();
  }

  async #history() {
    try {
      const h = await call("GET", `/ui/history/${encodeURIComponent(this.name)}`);
      const d = { t: [], queue: [], p50: [], p99: [], ttft: [] };
      for (const [t, q, p50, p99, ttft] of h.samples) {
        d.t.push(t);
        d.queue.push(q);
        d.p50.push(p50);
        d.p99.push(p99);
        d.ttft.push(ttft);
      }
      // samples that arrived on the stream meanwhile are newer
      const after = this.data.t.findIndex((t) => t > (d.t.at(-1) ?? 0));
      if (after >= 0) for (const k of Object.keys(d)) d[k].push(...this.data[k].slice(after));
      this.data = d;
      this.lastSample = d.t.at(-1) ?? 0;
      this.#drawCharts();
    } catch (err) {
      this.message.textContent = `history: ${err.message}`;
    }
  }

  #drawCharts() {
    if (!this.queueChart) {
      this.queueChart = new uPlot(chart("Queue depth", ["queued"], ["#4a7bd0"]), [[], []], this.charts);
      this.latencyChart = new uPlot(
        chart("Latency and time to first token (ms)", ["p50", "p99", "TTFT"], ["#2e9d5b", "#e0a100", "#9b59b6"]),
        [[], [], [], []],
        this.charts,
      );
    }
    const d = this.data;
    this.queueChart.setData([d.t, d.queue]);
    this.latencyChart.setData([d.t, d.p50, d.p99, d.ttft]);
  }

  #sample(r) {
    const now = Date.now() / 1000;
    if (now - this.lastSample < 1) return;
    this.lastSample = now;
    const d = this.data;
    d.t.push(now);
    d.queue.push(r.queue);
    d.p50.push(r.p50_ms);
    d.p99.push(r.p99_ms);
    d.ttft.push(r.ttft_ms);
    while (d.t.length && d.t[0] < now - WINDOW_S) for (const k of Object.keys(d)) d[k].shift();
    if (this.queueChart) this.#drawCharts();
  }

  update(state) {
    const r = state.regions.find((x) => x.name === this.name);
    if (!r) {
      this.header.replaceChildren(el("h2", {}, this.name), el("p", {}, "not in the routing snapshot"));
      return;
    }
    fill(
      this.header,
      el("h2", {}, r.name, " ", badge(r.state)),
      el(
        "p",
        { class: "facts" },
        `${r.gpus_healthy}/${r.gpus_total} GPUs healthy (${r.gpu_type || "?"}) · ${r.workers_healthy}/${r.workers_total} workers ready · ` +
          `capacity ${num(r.capacity_rps)} req/s · serving ${num(r.rps)} req/s · queue ${r.queue} · ` +
          `agent ${r.agent ? "connected" : "absent"}` +
          (r.report_age_s !== null ? ` · last report ${num(r.report_age_s)} s ago` : ""),
      ),
      r.reason ? el("p", { class: "reason" }, r.reason) : null,
    );
    this.#buttons(r);
    this.#sample(r);
  }

  // the region's GPUs and workers (the stream sends them for the region in focus)
  updateDetail(r) {
    if (r.name !== this.name) return;
    this.gpus.replaceChildren(
      table(
        ["GPU", "condition", "util %", "temp °C", "memory", "ECC (corr/uncorr)", "XIDs", "reason"],
        r.gpus.map((g) =>
          el(
            "tr",
            { class: `gpu cond-${g.condition}` },
            el("td", {}, g.index),
            el("td", {}, g.condition),
            el("td", {}, num(g.util)),
            el("td", {}, num(g.temp_c)),
            el("td", {}, `${bytes(g.mem_used)} / ${bytes(g.mem_total)}`),
            el("td", {}, `${g.ecc_corrected} / ${g.ecc_uncorrected}`),
            el("td", {}, g.xids.join(", ") || "–"),
            el("td", {}, g.reason),
          ),
        ),
        { class: "gpus" },
      ),
    );
    this.workers.replaceChildren(
      table(
        ["worker", "state", "models", "queue", "in flight", "req/s", "p50 ms", "p99 ms", "KV", "reason"],
        r.workers.map((w) =>
          el(
            "tr",
            {},
            el("td", {}, w.id),
            el("td", {}, badge(w.state)),
            el("td", {}, w.models.join(", ")),
            el("td", {}, w.queue),
            el("td", {}, w.in_flight),
            el("td", {}, num(w.rps)),
            el("td", {}, num(w.p50_ms)),
            el("td", {}, num(w.p99_ms)),
            el("td", {}, w.kv === null ? "–" : `${Math.round(w.kv * 100)}%`),
            el("td", {}, w.reason),
          ),
        ),
        { class: "workers" },
      ),
    );
  }

  #buttons(r) {
    if (!session.admin) {
      this.actions.replaceChildren();
      return;
    }
    const draining = r.state === "draining";
    if (this.actions.dataset.draining === String(draining)) return;
    this.actions.dataset.draining = String(draining);
    const act = async (what) => {
      try {
        await call("POST", `/v1/regions/${encodeURIComponent(this.name)}/${what}`);
        this.message.textContent = `${what}: requested`;
      } catch (err) {
        this.message.textContent = `${what} failed: ${err.message}`;
      }
    };
    this.actions.replaceChildren(
      draining
        ? el("button", { id: "undrain", onclick: () => act("undrain") }, "Undrain")
        : el("button", { id: "drain", class: "danger", onclick: () => act("drain") }, "Drain"),
    );
  }
}
