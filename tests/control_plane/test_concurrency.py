"""Concurrent writers through the registry core: no lost writes, races end in 409/412."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from control_plane.schemas import ModelCreate, ModelUpdate
from meridian.errors import Conflict, MeridianError, PreconditionFailed
from tests.control_plane.conftest import Api, unique


def _outcome(fn: Callable[[], object]) -> str:
    try:
        fn()
    except MeridianError as exc:
        return type(exc).__name__
    return "ok"


def test_parallel_creates_all_land(api: Api) -> None:
    registry = api.registry
    names = [unique("par") for _ in range(24)]
    with ThreadPoolExecutor(8) as pool:
        results = list(
            pool.map(
                lambda n: _outcome(lambda: registry.create_model(ModelCreate(name=n), actor="par")),
                names,
            )
        )
    assert results == ["ok"] * len(names)
    listed = {m.name for m in registry.list_models(limit=500, offset=0).items}
    assert set(names) <= listed


def test_racing_creates_of_one_name_give_one_winner(api: Api) -> None:
    registry = api.registry
    name = unique("race")

    def create(_: int) -> str:
        return _outcome(lambda: registry.create_model(ModelCreate(name=name), actor="race"))

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(create, range(8)))
    assert results.count("ok") == 1
    assert results.count(Conflict.__name__) == 7


def test_racing_updates_never_lose_one_silently(api: Api) -> None:
    registry = api.registry
    name = api.model()

    def update(i: int) -> str:
        return _outcome(
            lambda: registry.update_model(
                name, ModelUpdate(description=f"d{i}"), expected_version=None, actor="race"
            )
        )

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(update, range(16)))
    assert set(results) <= {"ok", PreconditionFailed.__name__}
    # every acknowledged update bumped the version exactly once
    assert registry.get_model(name).row_version == 1 + results.count("ok")
