"""Inference engines behind one interface (:class:`Engine`)."""

from __future__ import annotations

from worker.engines.base import Engine, EngineFormat, open_engine

__all__ = ["Engine", "EngineFormat", "open_engine"]
