"""Text deltas: whole characters only, stop strings cut and never leaked."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from worker.generation.factory import load_tokenizer
from worker.generation.sequence import IncrementalText


def byte_decode(ids: Sequence[int]) -> str:
    """Each token is one byte, decoded like a byte-level BPE decoder does."""
    return bytes(ids).decode("utf-8", errors="replace")


def feed(text: IncrementalText, data: bytes) -> tuple[list[str], bool]:
    deltas, ids = [], []
    for byte in data:
        ids.append(byte)
        delta, stopped = text.update(ids)
        deltas.append(delta)
        if stopped:
            return deltas, True
    deltas.append(text.flush(ids))
    return deltas, False


def test_multibyte_characters_are_held_until_complete() -> None:
    deltas, stopped = feed(IncrementalText(byte_decode, ()), "a€b".encode())
    assert not stopped
    assert deltas == ["a", "", "", "€", "b", ""]


def test_stop_string_ends_the_text_before_it() -> None:
    deltas, stopped = feed(IncrementalText(byte_decode, ("END",)), b"hello ENDworld")
    assert stopped
    assert "".join(deltas) == "hello "
    # "E" and "EN" were held back: they might have begun the stop string
    assert deltas[-3:] == ["", "", ""]


def test_a_false_start_of_a_stop_string_is_released() -> None:
    deltas, stopped = feed(IncrementalText(byte_decode, ("ENDS",)), b"xENDy")
    assert not stopped
    assert "".join(deltas) == "xENDy"
    assert deltas[:4] == ["x", "", "", ""]


def test_earliest_of_several_stop_strings_wins() -> None:
    deltas, stopped = feed(IncrementalText(byte_decode, ("cd", "bcde")), b"abcdef")
    assert stopped
    assert "".join(deltas) == "ab"


def test_flush_releases_held_back_text() -> None:
    text = IncrementalText(byte_decode, ("xyz",))
    ids = list(b"abxy")
    delta, stopped = text.update(ids)
    assert (delta, stopped) == ("ab", False)
    assert text.flush(ids) == "xy"


def test_byte_level_bpe_text_comes_out_whole(tiny_gpt2: Path) -> None:
    tokenizer, _ = load_tokenizer(tiny_gpt2)
    source = "Grüße aus 東京 🙂 — naïve café"
    ids = tokenizer.encode(source)
    text = IncrementalText(tokenizer.decode, ())
    deltas = [text.update(ids[: i + 1])[0] for i in range(len(ids))]
    assert "".join(deltas) + text.flush(ids) == source
    assert all("\ufffd" not in d for d in deltas)
    assert "" in deltas  # a character split across tokens was held back
