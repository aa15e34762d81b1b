"""Wait limits of the tests that scale with the machine's load, not fixed clocks.

A test that waits for a job, a process or a port gives the wait a limit sized for an idle machine and
passes it through ``scaled()``: the factor is ``GMPI_TEST_TIME_SCALE`` when set (at least 1), else the
1-minute load average per CPU clamped to [1, 4], read once per test session (2 cores shared with a load
of 8 make every limit four times as long). Waits still end as soon as what they wait for happens.
"""

from __future__ import annotations

import functools
import os
from typing import Any

ENV = "GMPI_TEST_TIME_SCALE"
MAX_AUTO_SCALE = 4.0


@functools.cache
def time_scale() -> float:
    """The factor every wait limit of the tests is multiplied by."""
    given = os.environ.get(ENV, "").strip()
    if given:
        try:
            return max(1.0, float(given))
        except ValueError:
            raise ValueError(f"{ENV} must be a number (a factor >= 1), got {given!r}") from None
    try:
        load = os.getloadavg()[0] / (os.cpu_count() or 1)
    except OSError:  # no load average on this platform
        return 1.0
    return min(MAX_AUTO_SCALE, max(1.0, load))


def scaled(seconds: float) -> float:
    """``seconds`` (the limit on an idle machine) times ``time_scale()``."""
    return seconds * time_scale()


def scale_timeout_markers(items: list[Any]) -> None:
    """``pytest.mark.timeout(N)`` of each item becomes ``timeout(scaled(N))`` (once per item, whichever
    conftest calls it first)."""
    import pytest

    if time_scale() == 1.0:
        return
    for item in items:
        marker = item.get_closest_marker("timeout")
        if getattr(item, "_gmpi_timeout_scaled", False) or marker is None or not marker.args:
            continue
        if isinstance(marker.args[0], (int, float)):
            limit = scaled(marker.args[0])
            item.add_marker(pytest.mark.timeout(limit, *marker.args[1:], **marker.kwargs), append=False)
            item._gmpi_timeout_scaled = True
