"""Generative models: continuous batching over a paged KV cache with prefix reuse.

Entry points (imported from their modules so that importing this package stays
cheap): :func:`worker.generation.factory.open_generation_engine`,
:class:`worker.generation.settings.GenerationSettings` and the contract in
:mod:`worker.generation.types`.
"""
