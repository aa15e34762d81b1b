"""Progress of an ``evaluate`` job: the evaluation protocol's stages as one count with an ETA.

``gmpi_core.eval.protocol.run_eval`` works in stages, each over a known number of images: real-image
features for FID/KID (``n_real``; skipped when cached), fake images (``n_fid``), identity view pairs
(``n_identity``), geometry renders (``n_geometry``). ``EvalProgress`` plans them from the options and
the model's ``EvalConfig``, and turns the protocol's reports ``(stage, done, total)`` into the job's
progress: step = images done over all stages, total = their sum, a message per stage (``FID: 640/2048
fakes``) and an ETA: the images left at the average rate since the first report (setup before it, such as
loading the model and the feature extractors, does not count). Stages differ in cost per image, so it is
an average that settles as the run goes.

The reports come from the library's hook: ``run_eval(..., on_progress=progress)`` calls
``progress(stage, done, total)`` with ``stage`` one of ``STAGES``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# the protocol's stage names (its tqdm descriptions) → how the job's message names them
STAGES: dict[str, tuple[str, str]] = {
    "fid_kid: real features": ("FID: real features", "real images"),
    "fid_kid: fakes": ("FID", "fakes"),
    "identity": ("identity", "view pairs"),
    "geometry": ("geometry", "renders"),
}


@dataclass
class _Stage:
    name: str
    total: int
    done: int = 0


class EvalProgress:
    """Maps the protocol's per-stage reports onto ``report(step, total, message, stage)``."""

    def __init__(self, report: Callable[..., None], options: Any, config: Any, *, has_data: bool) -> None:
        from gmpi_core.eval.protocol import ResolvedProtocol

        proto = ResolvedProtocol.of(options, config)
        wanted = set(options.metrics)
        plan: list[_Stage] = []
        if wanted & {"fid", "kid"} and has_data:
            plan += [_Stage("fid_kid: real features", proto.n_real), _Stage("fid_kid: fakes", proto.n_fid)]
        if "identity" in wanted:
            plan.append(_Stage("identity", proto.n_identity))
        if wanted & {"depth", "pose"}:
            plan.append(_Stage("geometry", proto.n_geometry))
        self.stages = plan
        self.report = report
        self._first: tuple[int, float] | None = None  # (step, time) of the protocol's first report

    @property
    def total(self) -> int:
        return max(1, sum(s.total for s in self.stages))

    @property
    def step(self) -> int:
        return sum(s.done for s in self.stages)

    def start(self) -> None:
        names = ", ".join(STAGES[s.name][0] for s in self.stages) or "nothing"
        self.report(0, self.total, f"evaluating: {names}", stage="setup")

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        """One report of the protocol: ``done`` of ``total`` images of ``stage``."""
        index = next((i for i, s in enumerate(self.stages) if s.name == stage), None)
        if index is None:
            return
        for earlier in self.stages[:index]:  # a stage that did not report to its end (cached, skipped)
            earlier.done = earlier.total
        current = self.stages[index]
        if total is not None and total > 0:
            current.total = int(total)  # e.g. fewer real images than asked for
        current.done = min(int(done), current.total)
        now, step, total_all = time.monotonic(), self.step, self.total
        if self._first is None:
            self._first = (step, now)
        s0, t0 = self._first
        eta = round((now - t0) / (step - s0) * (total_all - step), 1) if step > s0 else None
        label, unit = STAGES[stage]
        if stage == "fid_kid: real features":
            message = f"{label} {current.done}/{current.total}"
        else:
            message = f"{label}: {current.done}/{current.total} {unit}"
        self.report(step, total_all, message, stage=stage, eta_s=eta)

    def finish(self, message: str) -> None:
        for s in self.stages:
            s.done = s.total
        self.report(self.total, self.total, message, stage="report")
