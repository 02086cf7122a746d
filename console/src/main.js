// The Meridian console: sign in, follow the fleet state stream, show the page the URL's
// hash names (#/ map, #/region/NAME, #/deployments, #/rollouts[/ID], #/audit).

import "uplot/dist/uPlot.min.css";
import "./console.css";
import { follow, savedToken, session, signIn, signOut } from "./api.js";
import { AuditPage } from "./audit.js";
import { DeploymentsPage } from "./deployments.js";
import { WorldMap } from "./map.js";
import { RegionPage } from "./region.js";
import { RolloutPage, RolloutsPage } from "./rollouts.js";
import { badge, el, num } from "./util.js";

const main = document.getElementById("main");
const status = document.getElementById("status");
const who = document.getElementById("who");
let latest = null;
let page = null;
let stream = null;

class Overview {
  constructor() {
    this.map = new WorldMap((name) => (location.hash = `#/region/${encodeURIComponent(name)}`));
    this.body = el("tbody");
    this.rows = new Map(); // region -> its row's cells, updated in place
    this.node = el(
      "section",
      { class: "overview" },
      this.map.node,
      el(
        "table",
        { class: "regions" },
        el("thead", {}, el("tr", {}, REGION_COLUMNS.map((h) => el("th", {}, h)))),
        this.body,
      ),
    );
  }

  update(state) {
    this.map.update(state);
    const seen = new Set();
    state.regions.forEach((r, i) => {
      seen.add(r.name);
      let row = this.rows.get(r.name);
      if (!row) {
        const cells = REGION_COLUMNS.slice(1).map(() => el("td"));
        const tr = el(
          "tr",
          { "data-region": r.name },
          el("td", {}, el("a", { href: `#/region/${encodeURIComponent(r.name)}` }, r.name)),
          cells,
        );
        row = { tr, cells, badge: badge(r.state) };
        cells[0].append(row.badge);
        cells[6].className = "reason";
        this.rows.set(r.name, row);
      }
      if (this.body.children[i] !== row.tr) this.body.insertBefore(row.tr, this.body.children[i] ?? null);
      if (row.badge.textContent !== r.state) {
        row.badge.textContent = r.state;
        row.badge.className = `badge state-${r.state}`;
      }
      const values = [
        null,
        `${r.gpus_healthy}/${r.gpus_total}`,
        `${r.workers_healthy}/${r.workers_total}`,
        r.queue,
        num(r.rps),
        num(r.p50_ms),
        r.reason,
      ];
      values.forEach((v, j) => {
        if (v !== null && row.cells[j].textContent !== String(v)) row.cells[j].textContent = v;
      });
    });
    for (const [name, row] of this.rows) if (!seen.has(name)) (row.tr.remove(), this.rows.delete(name));
  }
}

const REGION_COLUMNS = ["region", "state", "GPUs", "workers", "queue", "req/s", "p50 ms", "reason"];

function route() {
  const hash = location.hash || "#/";
  const region = hash.match(/^#\/region\/(.+)$/);
  const rollout = hash.match(/^#\/rollouts\/(\d+)$/);
  if (region) page = new RegionPage(decodeURIComponent(region[1]));
  else if (rollout) page = new RolloutPage(rollout[1]);
  else if (hash === "#/deployments") page = new DeploymentsPage();
  else if (hash === "#/rollouts") page = new RolloutsPage();
  else if (hash === "#/audit") page = new AuditPage();
  else page = new Overview();
  const current = region ? "#/" : rollout ? "#/rollouts" : hash;
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("current", link.getAttribute("href") === current);
  }
  main.replaceChildren(page.node);
  stream?.focus(region ? decodeURIComponent(region[1]) : null);
  if (latest) page.update(latest);
}

// one update per animation frame at most, whatever the stream's rate; how long updates
// take is kept in window.meridianConsole (the browser tests read it)
const stats = { updates: 0, totalMs: 0, maxMs: 0 };
window.meridianConsole = stats;
let pending = false;
function onState(state) {
  latest = state;
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => {
    pending = false;
    const began = performance.now();
    page?.update(latest);
    const took = performance.now() - began;
    stats.updates += 1;
    stats.totalMs += took;
    stats.maxMs = Math.max(stats.maxMs, took);
  });
}

function onStatus(text) {
  status.textContent = text;
  status.className = `status ${text}`;
}

function start() {
  who.replaceChildren(
    `${session.name} (${session.admin ? "admin" : "read only"}) `,
    el("button", { id: "sign-out", onclick: () => signOut().then(showSignIn) }, "Sign out"),
  );
  document.body.dataset.role = session.admin ? "admin" : "read";
  window.addEventListener("hashchange", route);
  stream = follow(onState, (detail) => page?.updateDetail?.(detail), onStatus);
  route();
}

function showSignIn(message = "") {
  if (stream) (stream.stop(), (stream = null));
  window.removeEventListener("hashchange", route);
  who.replaceChildren();
  onStatus("signed out");
  const input = el("input", { id: "token", type: "password", autocomplete: "off", placeholder: "admin or read token" });
  const error = el("p", { class: "error", role: "alert" }, message);
  const form = el(
    "form",
    {
      class: "sign-in",
      onsubmit: async (e) => {
        e.preventDefault();
        try {
          await signIn(input.value.trim());
          start();
        } catch (err) {
          error.textContent = `sign-in refused: ${err.message}`;
        }
      },
    },
    el("h2", {}, "Sign in"),
    el("p", {}, "Paste an API token. A read token sees everything and changes nothing; an admin token may drain regions and act on rollouts."),
    input,
    el("button", { type: "submit", id: "sign-in" }, "Sign in"),
    error,
  );
  main.replaceChildren(form);
  input.focus();
}

const saved = savedToken();
if (saved) signIn(saved).then(start, () => showSignIn("the saved token was refused"));
else showSignIn();
