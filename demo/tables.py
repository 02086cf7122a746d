"""The tables ``meridian demo`` prints: per client city, embeddings and chat streams."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["city_rows", "render", "summary_rows"]

CHAT_HEADERS = ["TTFT p50 ms", "tok/s", "streams", "broken"]


def render(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _chat_cells(s: Mapping[str, object] | None) -> list[str]:
    if s is None:
        return ["-"] * len(CHAT_HEADERS)
    if not s["streams"] or s["streams"] == s["broken"]:
        return ["-", "-", str(s["streams"]), str(s["broken"])]
    return [f"{s['ttft_p50_ms']:.0f}", f"{s['tokens_per_s']:.1f}", str(s["streams"]),
            str(s["broken"])]  # fmt: skip


def city_rows(
    cities: list[str],
    embed: Mapping[str, Mapping[str, object]],
    chat: Mapping[str, Mapping[str, object]],
    current: Mapping[str, str],
) -> list[list[str]]:
    """The live table: where each city is served now, its latency so far."""
    rows = [["client city", "now served by", "requests", "p50 ms", "p99 ms", "retried",
             "errors", *CHAT_HEADERS]]  # fmt: skip
    for city in cities:
        s = embed[city]
        rows.append(
            [city, current.get(city, "-"), str(s["requests"]), f"{s['p50_ms']:.0f}",
             f"{s['p99_ms']:.0f}", str(s["retried"]), str(s["errors"]),
             *_chat_cells(chat.get(city))]
        )  # fmt: skip
    return rows


def summary_rows(
    embed: Mapping[str, Mapping[str, object]], chat: Mapping[str, Mapping[str, object]]
) -> list[list[str]]:
    """A phase's closing table: the regions that served each city, latency, chat figures."""
    rows = [["client city", "served by (requests)", "p50 ms", "p99 ms", "retried", "errors",
             *CHAT_HEADERS, "continued"]]  # fmt: skip
    for city, s in embed.items():
        regions = s["regions"]
        assert isinstance(regions, dict)
        served = ", ".join(f"{r} ({n})" for r, n in regions.items()) or "-"
        c = chat.get(city)
        rows.append(
            [city, served, f"{s['p50_ms']:.0f}", f"{s['p99_ms']:.0f}", str(s["retried"]),
             str(s["errors"]), *_chat_cells(c), str(c["continued"]) if c else "-"]
        )  # fmt: skip
    return rows
