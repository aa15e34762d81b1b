"""The e2e ``stack`` fixture's own cleanup, against a stand-in for scripts/stack.sh (no stack starts)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tests.e2e import conftest


def _fake_stack(tmp_path: Path, up: str) -> Path:
    script = tmp_path / "stack.sh"
    script.write_text(f'#!/bin/sh\necho "$1" >> "$GMPI_STACK_DIR/calls"\nif [ "$1" = up ]; then {up}; fi\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


@pytest.mark.parametrize("up", ["exec sleep 30", "exit 3"], ids=["up-times-out", "up-fails"])
def test_down_runs_when_up_times_out_or_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, up: str
) -> None:
    monkeypatch.setattr(conftest, "STACK", _fake_stack(tmp_path, up))
    monkeypatch.setattr(conftest, "scaled", lambda s: s)  # the 1 s limit below stays 1 s
    with (
        pytest.raises(AssertionError, match="stack up failed"),
        conftest.running_stack(tmp_path, conftest._port(), up_timeout=1),
    ):
        pytest.fail("the stack must not be handed out")
    assert (tmp_path / "calls").read_text().split() == ["up", "down"]
