"""tests/timing.py: wait limits scale with GMPI_TEST_TIME_SCALE or the load, within [1, 4] when derived."""

from __future__ import annotations

import os

import pytest

from tests import timing


@pytest.fixture(autouse=True)
def _fresh() -> object:
    timing.time_scale.cache_clear()
    yield
    timing.time_scale.cache_clear()


def test_the_env_factor_wins_and_is_at_least_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(timing.ENV, "2.5")
    assert timing.scaled(10) == 25
    timing.time_scale.cache_clear()
    monkeypatch.setenv(timing.ENV, "0.1")
    assert timing.time_scale() == 1.0
    timing.time_scale.cache_clear()
    monkeypatch.setenv(timing.ENV, "fast")
    with pytest.raises(ValueError, match=timing.ENV):
        timing.time_scale()


@pytest.mark.parametrize(("load", "want"), [(0.1, 1.0), (6.0, 3.0), (100.0, 4.0)])
def test_the_derived_factor_is_load_per_cpu_clamped(
    monkeypatch: pytest.MonkeyPatch, load: float, want: float
) -> None:
    monkeypatch.delenv(timing.ENV, raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, 0.0, 0.0))
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert timing.time_scale() == want
