// The audit log: who changed what, newest first, filtered by entity, actor and action.

import { call } from "./api.js";
import { el, fill, table } from "./util.js";

const PAGE = 50;

export class AuditPage {
  constructor() {
    this.offset = 0;
    this.inputs = {
      entity: el("input", { name: "entity", placeholder: "entity (region, deployment...)" }),
      entity_key: el("input", { name: "entity_key", placeholder: "key" }),
      actor: el("input", { name: "actor", placeholder: "actor" }),
      action: el("input", { name: "action", placeholder: "action" }),
    };
    this.list = el("div");
    this.pager = el("p", { class: "pager" });
    const form = el(
      "form",
      {
        class: "filters",
        onsubmit: (e) => {
          e.preventDefault();
          this.offset = 0;
          this.load();
        },
      },
      Object.values(this.inputs),
      el("button", { type: "submit" }, "Filter"),
    );
    this.node = el("section", { class: "audit-page" }, el("h2", {}, "Audit log"), form, this.list, this.pager);
    this.load();
  }

  async load() {
    const query = new URLSearchParams({ limit: PAGE, offset: this.offset });
    for (const [key, input] of Object.entries(this.inputs)) if (input.value.trim()) query.set(key, input.value.trim());
    try {
      const page = await call("GET", `/v1/audit?${query}`);
      this.list.replaceChildren(
        table(
          ["when", "actor", "action", "entity", "key", "detail"],
          page.items.map((a) =>
            el(
              "tr",
              {},
              el("td", {}, new Date(a.at).toLocaleString()),
              el("td", {}, a.actor),
              el("td", {}, a.action),
              el("td", {}, a.entity),
              el("td", {}, a.entity_key),
              el("td", { class: "detail" }, a.detail ? JSON.stringify(a.detail) : ""),
            ),
          ),
          { class: "audit" },
        ),
      );
      const last = Math.min(this.offset + PAGE, page.total);
      fill(
        this.pager,
        `${page.total ? this.offset + 1 : 0}–${last} of ${page.total} `,
        this.offset > 0 ? el("button", { onclick: () => ((this.offset -= PAGE), this.load()) }, "newer") : null,
        last < page.total ? el("button", { onclick: () => ((this.offset += PAGE), this.load()) }, "older") : null,
      );
    } catch (err) {
      this.list.textContent = `audit: ${err.message}`;
    }
  }

  update() {}
}
