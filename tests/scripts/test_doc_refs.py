"""scripts/check_doc_refs.py: every method section cited in the repository has a heading in docs/method.md.

The section sign is written as an escape in this file so that the file itself cites nothing.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "check_doc_refs.py"
S = "\u00a7"


@pytest.fixture(scope="module")
def refs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_doc_refs", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_every_citation_in_the_repository_resolves() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--list"], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "MISSING" not in proc.stdout


def test_both_citation_forms_and_lists_and_ranges_are_found(refs: ModuleType) -> None:
    text = (
        f"# spec {S}1.2, {S}1.6 and spec {S}9.3-{S}9.4\n"
        f"x = 1  # docs/method.md {S}2.3-2.5; method {S}6.6/{S}12.2.1\n"
        f'"""Spec {S}4.2 step 8 and {S}4.3 as written; bare ({S}3.3) and {S}{S}11.2 to {S}11.4."""\n'
    )
    found = [(c.line, c.number, c.document) for c in refs.citations_in_text(text)]
    assert [n for _, n, _ in found] == [
        "1.2", "1.6", "9.3", "9.4", "2.3", "2.5", "6.6", "12.2.1", "4.2", "4.3", "3.3", "11.2", "11.4",
    ]  # fmt: skip
    assert {d for _, _, d in found} == {"method"}
    assert [line for line, _, _ in found][:4] == [1, 1, 1, 1]


def test_other_documents_are_not_method_citations(refs: ModuleType) -> None:
    text = (
        f"(DESIGN.md, field notes {S}5) and offline-components.md {S}2\n"
        f"spec field notes {S}2, {S}4 but spec {S}1.3\n"
        f"written to `fid.txt` ({S}6.9)\n"
    )
    found = [(c.number, c.document) for c in refs.citations_in_text(text)]
    assert found == [
        ("5", "external"), ("2", "external"), ("2", "external"), ("4", "external"),
        ("1.3", "method"), ("6.9", "method"),
    ]  # fmt: skip


def test_numbers_that_are_not_citations_are_ignored(refs: ModuleType) -> None:
    text = f"fov 12.6 deg, {S}N in prose, a {S}x, ({S}1.2 table, 12.6) and {S}2d\n"
    assert [c.number for c in refs.citations_in_text(text)] == ["1.2"]


def test_headings_are_read_outside_code_fences(tmp_path: Path, refs: ModuleType) -> None:
    doc = tmp_path / "method.md"
    doc.write_text(
        "# Title\n## 1. Cameras\n### 1.6 Real poses\n#### 12.2.1 Black start\n"
        "```\n## 9.9 not a heading\n```\n## Contents\n",
        encoding="utf-8",
    )
    assert refs.method_headings(doc) == {"1", "1.6", "12.2.1"}


def test_a_missing_section_fails_with_its_location(tmp_path: Path, refs: ModuleType) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "method.md").write_text("## 1. A\n### 1.6 B\n", encoding="utf-8")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text(
        f"# spec {S}1.6\n# docs/method.md {S}1.6\n\n# spec {S}7.3\n# field notes {S}8\n", encoding="utf-8"
    )
    ok = subprocess.run(
        [sys.executable, str(SCRIPT), "--root", str(tmp_path), "--no-git"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 1
    assert f"pkg/mod.py:4: {S}7.3" in ok.stderr
    assert f"{S}1.6" not in ok.stderr and f"{S}8" not in ok.stderr
    (tmp_path / "docs" / "method.md").write_text("## 1. A\n### 1.6 B\n## 7. C\n### 7.3 D\n", encoding="utf-8")
    assert refs.main(["--root", str(tmp_path), "--no-git"]) == 0
