// Progressive rollouts: the list (#/rollouts) and one rollout (#/rollouts/ID), its waves,
// steps and the gates' figures and verdicts per region of the current wave. The stream's
// state carries the active rollouts and those finished lately; older ones are read once
// over REST. An admin may pause, resume, promote or abort a rollout, each with the ETag
// of the rollout as this page last read it (GET /v1/rollouts/ID).

import { call, exchange, session } from "./api.js";
import { badge, el, fill, num, table } from "./util.js";

const ACTIONS = {
  pause: ["running", "promoting"],
  resume: ["paused"],
  promote: ["running", "paused"],
  abort: ["running", "promoting", "paused"],
}; // as the API allows them
const CONFIRM = new Set(["promote", "abort"]); // a second click within CONFIRM_MS does it
const CONFIRM_MS = 5000;

function pct(share) {
  return `${Number((share * 100).toFixed(share < 0.1 ? 1 : 0))}%`;
}

function versions(r) {
  return `${r.from_version} → ${r.to_version}${r.variant ? ` (${r.variant})` : ""}`;
}

// where a rollout is: "wave 1/2 · step 2/4 (10%)"
function position(r) {
  const wave = `wave ${r.wave + 1}/${r.waves.length}`;
  if (r.step < 0) return `${wave} · starting workers`;
  return `${wave} · step ${r.step + 1}/${r.steps.length} (${pct(r.steps[r.step])})`;
}

const ACTIVE = ["running", "promoting", "paused"];

// the new version's share of a wave's regions (none anywhere once rolled back or aborted)
function waveShare(r, i) {
  if (r.state === "completed") return 1;
  if (!ACTIVE.includes(r.state) || i > r.wave) return 0;
  if (i < r.wave) return 1;
  return r.step < 0 ? 0 : r.steps[r.step];
}

function waveStatus(r, i) {
  if (r.state === "completed" || i < r.wave) return "done";
  if (i > r.wave) return "pending";
  return ACTIVE.includes(r.state) ? "current" : r.state;
}

function rolloutBadge(state) {
  return el("span", { class: `badge rollout-${state}` }, state.replace("_", " "));
}

export class RolloutsPage {
  constructor() {
    this.history = new Map(); // id -> rollout, read over REST (older than the stream's)
    this.live = "";
    this.key = "";
    this.latest = [];
    this.rows = el("div");
    this.message = el("p", { class: "message", role: "status" });
    this.node = el(
      "section",
      { class: "rollouts-page" },
      el("h2", {}, "Rollouts"),
      el("p", { class: "hint" }, "A new version moves through regions in waves of canary steps, each gated on its figures against the old version's. Click a rollout for its waves and gates."),
      this.rows,
      this.message,
    );
    this.#load();
  }

  async #load() {
    try {
      const page = await call("GET", "/v1/rollouts?limit=50");
      this.history = new Map(page.items.map((r) => [r.id, r]));
      this.key = "";
      this.#draw();
    } catch (err) {
      this.message.textContent = `rollouts: ${err.message}`;
    }
  }

  update(state) {
    this.latest = state.rollouts ?? [];
    const live = this.latest.map((r) => r.id).join(",");
    // one that left the stream finished long enough ago: read the list again
    const left = this.live && this.live.split(",").some((id) => !this.latest.some((r) => String(r.id) === id));
    this.live = live;
    if (left) this.#load();
    this.#draw();
  }

  #draw() {
    const merged = new Map(this.history);
    for (const r of this.latest) merged.set(r.id, r);
    const rollouts = [...merged.values()].sort((a, b) => b.id - a.id);
    const key = JSON.stringify(rollouts.map((r) => [r.id, r.state, r.wave, r.step, r.share, r.reason]));
    if (key === this.key) return;
    this.key = key;
    if (!rollouts.length) {
      this.rows.replaceChildren(el("p", { class: "empty" }, "No rollouts yet."));
      return;
    }
    this.rows.replaceChildren(
      table(
        ["rollout", "model", "versions", "state", "wave / step", "new version's share", "reason"],
        rollouts.map((r) =>
          el(
            "tr",
            { "data-rollout": r.id, "data-state": r.state },
            el("td", {}, el("a", { href: `#/rollouts/${r.id}` }, `#${r.id}`)),
            el("td", {}, r.model),
            el("td", {}, versions(r)),
            el("td", { class: "rollout-state" }, rolloutBadge(r.state)),
            el("td", {}, position(r)),
            el("td", {}, pct(r.share)),
            el("td", { class: "reason" }, r.reason),
          ),
        ),
        { class: "rollouts" },
      ),
    );
  }
}

export class RolloutPage {
  constructor(id) {
    this.id = Number(id);
    this.rollout = null; // the latest seen, from the stream or REST
    this.read = null; // the rollout as GET last answered it (its gates), and its ETag
    this.etag = null;
    this.reading = false;
    this.drawn = "";
    this.buttonsFor = "";
    this.header = el("div", { class: "rollout-head" });
    this.actions = el("div", { class: "actions", id: "rollout-actions" });
    this.message = el("p", { class: "message", role: "status" });
    this.waves = el("div");
    this.gates = el("div");
    this.settings = el("div", { class: "facts" });
    this.node = el(
      "section",
      { class: "rollout-page", "data-rollout": this.id },
      el("p", {}, el("a", { href: "#/rollouts" }, "← rollouts")),
      this.header,
      this.actions,
      this.message,
      el("h3", {}, "Waves"),
      this.waves,
      el("h3", {}, "Gates in the current wave"),
      this.gates,
      this.settings,
    );
    this.#read();
  }

  // GET the rollout: its gates' settings, and the ETag the buttons send
  async #read() {
    if (this.reading) return;
    this.reading = true;
    try {
      const { body, etag } = await exchange("GET", `/v1/rollouts/${this.id}`);
      this.read = body;
      this.etag = etag;
      if (!this.rollout || this.rollout.row_version <= body.row_version) this.rollout = body;
      this.#draw();
    } catch (err) {
      this.message.textContent = `rollout ${this.id}: ${err.message}`;
    } finally {
      this.reading = false;
    }
  }

  update(state) {
    const r = (state.rollouts ?? []).find((x) => x.id === this.id);
    if (!r) return; // not active nor recent: as GET answered
    if (this.read && r.row_version < this.read.row_version) return; // the stream catches up
    this.rollout = r;
    if (this.read && r.row_version > this.read.row_version) this.#read(); // moved: a new ETag
    this.#draw();
  }

  #draw() {
    const r = this.rollout;
    if (!r) return;
    const key = JSON.stringify([r.state, r.wave, r.step, r.reason, r.figures, r.row_version, !!this.read]);
    if (key === this.drawn) return;
    this.drawn = key;
    fill(
      this.header,
      el("h2", {}, `Rollout #${r.id}: ${r.model} ${versions(r)} `, rolloutBadge(r.state)),
      el(
        "p",
        { class: "facts" },
        `${position(r)} · the new version has ${pct(r.share)} of the current wave's traffic · ` +
          `steps ${r.steps.map(pct).join(" → ")} · bake ${num(r.bake_s, 0)} s · started by ${r.created_by}` +
          (r.finished_at ? ` · finished ${new Date(r.finished_at).toLocaleString()}` : ""),
      ),
      el("p", { class: "reason" }, r.reason),
    );
    this.waves.replaceChildren(
      table(
        ["wave", "regions", "status", "new version's share"],
        r.waves.map((regions, i) =>
          el(
            "tr",
            { class: `wave wave-${waveStatus(r, i)}` },
            el("td", {}, i + 1),
            el("td", {}, regions.flatMap((name, j) => [j ? ", " : null, el("a", { href: `#/region/${encodeURIComponent(name)}` }, name)])),
            el("td", {}, waveStatus(r, i)),
            el("td", {}, pct(waveShare(r, i))),
          ),
        ),
        { class: "waves" },
      ),
    );
    this.#figures(r);
    const g = this.read?.gates;
    this.settings.textContent = g
      ? `Gates: at least ${g.min_requests} requests; error rate at most ${pct(g.max_error_rate_increase)} above the old version's; ` +
        `p99 at most ×${g.max_p99_ratio} (+${g.p99_slack_ms} ms)${g.max_p99_ms ? `, ≤ ${g.max_p99_ms} ms` : ""}; ` +
        `output drift (${g.compare}) at most ${g.max_drift} on ${pct(g.mirror_share)} mirrored.`
      : "";
    this.#buttons(r);
  }

  #figures(r) {
    const regions = Object.keys(r.figures ?? {});
    if (!regions.length) {
      this.gates.replaceChildren(el("p", { class: "empty" }, r.step < 0 ? "The wave's workers are starting; no gate has figures yet." : "No figures yet."));
      return;
    }
    const old = (f, key) => {
      const v = f[key];
      if (v === null || v === undefined) return "–";
      return key.endsWith("rate") ? `${(v * 100).toFixed(2)}%` : num(v, 1);
    };
    this.gates.replaceChildren(
      table(
        ["region", "verdict", "requests", "error rate (new / old)", "p99 ms (new / old / limit)", "TTFT p99 ms (new / limit)", "drift (mirrored)", "why"],
        regions.map((name) => {
          const f = r.figures[name];
          return el(
            "tr",
            { "data-region": name, class: `gate verdict-${f.verdict}` },
            el("td", {}, name),
            el("td", {}, el("span", { class: `badge verdict-${f.verdict}` }, f.verdict)),
            el("td", {}, `${f.new_requests ?? 0} new · ${f.old_requests ?? 0} old`),
            el("td", {}, `${f.new_requests ? old(f, "new_error_rate") : "–"} / ${old(f, "old_error_rate")}`),
            el("td", {}, `${old(f, "new_p99_ms")} / ${old(f, "old_p99_ms")} / ${old(f, "p99_limit_ms")}`),
            el("td", {}, f.new_ttft_p99_ms === undefined ? "–" : `${old(f, "new_ttft_p99_ms")} / ${old(f, "ttft_limit_ms")}`),
            el("td", {}, f.drift_kind ? `${f.drift === null ? "–" : num(f.drift, 4)} ${f.drift_kind} (${f.mirrored})` : "–"),
            el("td", { class: "reason" }, (f.reasons ?? []).join("; ")),
          );
        }),
        { class: "gates" },
      ),
    );
  }

  #buttons(r) {
    if (!session.admin) {
      this.actions.replaceChildren();
      return;
    }
    const key = `${r.state}:${this.etag}`;
    if (this.buttonsFor === key) return;
    this.buttonsFor = key;
    const possible = Object.keys(ACTIONS).filter((a) => ACTIONS[a].includes(r.state));
    this.actions.replaceChildren(
      ...possible.map((action) => {
        const button = el(
          "button",
          { id: `rollout-${action}`, class: CONFIRM.has(action) ? "danger" : null, disabled: !this.etag },
          action[0].toUpperCase() + action.slice(1),
        );
        button.addEventListener("click", () => this.#act(action, button));
        return button;
      }),
    );
  }

  async #act(action, button) {
    if (CONFIRM.has(action) && button.dataset.confirm !== "yes") {
      button.dataset.confirm = "yes";
      button.textContent = `Confirm ${action}`;
      setTimeout(() => {
        if (!button.isConnected) return;
        delete button.dataset.confirm;
        button.textContent = action[0].toUpperCase() + action.slice(1);
      }, CONFIRM_MS);
      return;
    }
    button.disabled = true;
    try {
      const { body, etag } = await exchange("POST", `/v1/rollouts/${this.id}/${action}`, undefined, { "If-Match": this.etag });
      this.read = body;
      this.etag = etag;
      this.rollout = body;
      this.message.textContent = `${action}: done`;
      this.#draw();
    } catch (err) {
      this.message.textContent =
        err.status === 412 ? `${action} refused: the rollout changed since this page read it; look again and retry` : `${action} failed: ${err.message}`;
      this.buttonsFor = "";
      this.#read();
    }
  }
}
