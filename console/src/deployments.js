// Deployments and their traffic weights (live, from the snapshot), the autoscaler's
// desired replicas, and each deployment's latest scaling decisions (on demand, over REST).

import { call } from "./api.js";
import { badge, el, num, table } from "./util.js";

export class DeploymentsPage {
  constructor() {
    this.rows = el("div");
    this.detail = el("div", { class: "decisions" });
    this.ids = new Map(); // "model:version@region" -> deployment id
    this.node = el(
      "section",
      { class: "deployments-page" },
      el("h2", {}, "Deployments"),
      el("p", { class: "hint" }, "Weights split a model's traffic between versions in a region. Click a row for its scaling decisions."),
      this.rows,
      this.detail,
    );
    this.#ids();
  }

  async #ids() {
    try {
      for (let offset = 0; ; offset += 500) {
        const page = await call("GET", `/v1/deployments?limit=500&offset=${offset}`);
        for (const d of page.items) this.ids.set(`${d.model}:${d.version}@${d.region}`, d.id);
        if (offset + page.items.length >= page.total) break;
      }
    } catch (err) {
      this.detail.textContent = `deployments: ${err.message}`;
    }
  }

  async #scaling(key) {
    const id = this.ids.get(key);
    if (!id) return;
    try {
      const s = await call("GET", `/v1/deployments/${id}/scaling`);
      this.detail.replaceChildren(
        el("h3", {}, `Scaling of ${key}`),
        el(
          "p",
          {},
          `ready ${s.ready_replicas ?? "–"}, desired ${s.desired_replicas ?? "–"} (min ${s.min_replicas}, max ${s.max_replicas})` +
            (s.autoscale_pinned ? `, pinned at ${s.pinned_replicas}` : "") +
            (s.autoscaler_running ? "" : " · the autoscaler does not run on this replica"),
        ),
        table(
          ["when", "from", "to", "reason", "panic"],
          s.decisions.map((d) =>
            el(
              "tr",
              {},
              el("td", {}, `${num(d.at_s_ago, 0)} s ago`),
              el("td", {}, d.current),
              el("td", {}, d.desired),
              el("td", {}, d.reason),
              el("td", {}, d.panic ? "yes" : ""),
            ),
          ),
        ),
      );
    } catch (err) {
      this.detail.textContent = `scaling: ${err.message}`;
    }
  }

  update(state) {
    const states = new Map(state.regions.map((r) => [r.name, r]));
    this.rows.replaceChildren(
      table(
        ["model", "version", "variant", "region", "region state", "weight", "ready", "desired"],
        state.deployments.map((d) => {
          const key = `${d.model}:${d.version}@${d.region}`;
          return el(
            "tr",
            { class: "clickable", onclick: () => this.#scaling(key) },
            el("td", {}, d.model),
            el("td", {}, d.version),
            el("td", {}, d.variant || "–"),
            el("td", {}, el("a", { href: `#/region/${encodeURIComponent(d.region)}` }, d.region)),
            el("td", {}, badge(states.get(d.region)?.state ?? "down")),
            el("td", {}, num(d.weight, 2)),
            el("td", {}, d.ready),
            el("td", {}, d.desired ?? "–"),
          );
        }),
        { class: "deployments" },
      ),
    );
  }
}
