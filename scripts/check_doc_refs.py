#!/usr/bin/env python3
"""Check that every method section cited in the repository has a heading in docs/method.md.

Code, tests and documents cite the method document by section number: ``spec \u00a7N``, ``method \u00a7N``,
``docs/method.md \u00a7N``, or a bare ``\u00a7N`` (which in this repository always means the method
document). Lists and ranges count too: ``\u00a71.2, \u00a71.6``, ``\u00a79.3-\u00a79.4``, ``\u00a72.3-2.5``,
``\u00a76.6/\u00a712.2.1`` (both ends of a range are checked). A citation qualified by another
document (``field notes \u00a75``, ``offline-components.md \u00a72``, any other ``*.md``) is not a method
citation and is only listed with ``--external``.

    python scripts/check_doc_refs.py              # exit 0 when every cited number has a heading
    python scripts/check_doc_refs.py --list       # every cited number, how often and where first
    python scripts/check_doc_refs.py --external   # also the citations of other documents

Headings are Markdown ATX headings that start with the number: ``## 1. Camera model``, ``### 1.6 ...``,
``#### 12.2.1 ...``. Exit status 1 lists every unresolved citation as ``file:line: \u00a7N``.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METHOD_DOC = Path("docs") / "method.md"

SECTION = "\u00a7"  # the section sign, written as an escape so that this file cites nothing itself
_NUM = r"\d+(?:\.\d+)*"
# a chain of citations: a section sign and a number, then more numbers joined by , ; / "and" "or" (each
# with its own section sign) or by a range dash / "to" (where the second sign may be left out)
_JOINED = rf"(?:\s*[,;/]\s*|\s+(?:and|or)\s+){SECTION}{{1,2}}\s*{_NUM}"
_RANGE = rf"(?:\s*[-\u2013\u2014]\s*|\s+to\s+){SECTION}{{0,2}}\s*{_NUM}"
CHAIN = re.compile(rf"{SECTION}{{1,2}}\s*(?P<first>{_NUM})(?P<rest>(?:{_JOINED}|{_RANGE})*)(?![\w.]*\w)")
NUMBER = re.compile(_NUM)
HEADING = re.compile(rf"^ {{0,3}}#{{1,6}}\s+(?:{SECTION}\s*)?(?P<num>{_NUM})\.?(?=\s|$)")
FENCE = re.compile(r"^ {0,3}(```|~~~)")

# what names the document a citation points into: the last qualifier before a chain wins; another
# document counts only when it stands right before the chain (e.g. "field notes" or "DESIGN.md")
METHOD_QUALIFIER = r"(?:docs/)?method\.md|\bmethod\b|\bspec\b"
EXTERNAL_QUALIFIER = r"field[ _-]?notes|offline[ _-]components(?:\.md)?|\b[\w./-]*\.(?:md|rst)\b|\bDESIGN\b"
QUALIFIER = re.compile(rf"(?P<method>{METHOD_QUALIFIER})|(?P<external>{EXTERNAL_QUALIFIER})", re.IGNORECASE)
ADJACENT = re.compile(r"[\s:,;'`\"*()\[\]]{0,6}(?:'s\s*)?")
LOOKBACK = 80  # characters before a chain searched for its qualifier (never past the previous chain)

SKIP_DIRS = {
    ".git",
    ".venv",
    "venv",
    "node_modules",
    "__pycache__",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    ".stack",
    ".stack-docker",
}
SKIP_SUFFIXES = (".egg-info",)
MAX_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Citation:
    path: str  # relative to the repository root, with forward slashes
    line: int
    number: str
    document: str  # "method" or "external"
    context: str  # the qualifier text that decided ``document`` ("" for a bare citation)


def _git_files(root: Path) -> list[Path] | None:
    """Tracked and untracked-but-not-ignored files (read-only git call); None without git."""
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    names = sorted({n for n in out.decode("utf-8", "surrogateescape").split("\0") if n})
    return [root / n for n in names]


def _walk_files(root: Path) -> list[Path]:
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.endswith(SKIP_SUFFIXES))
        files.extend(Path(dirpath) / f for f in sorted(filenames))
    return files


def repository_files(root: Path, use_git: bool = True) -> list[Path]:
    files = _git_files(root) if use_git and (root / ".git").exists() else None
    if files is None:
        files = _walk_files(root)
    skipped = SKIP_DIRS
    return [
        f
        for f in files
        if f.is_file()
        and not any(part in skipped or part.endswith(SKIP_SUFFIXES) for part in f.relative_to(root).parts)
    ]


def _read_text(path: Path) -> str | None:
    try:
        if path.stat().st_size > MAX_BYTES:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def citations_in_text(text: str, path: str = "<text>") -> list[Citation]:
    """Every section citation of ``text`` with the document it points into."""
    found: list[Citation] = []
    previous_end = 0
    for m in CHAIN.finditer(text):
        window_start = max(previous_end, m.start() - LOOKBACK)
        window = text[window_start : m.start()]
        document, context = "method", ""
        qualifiers = list(QUALIFIER.finditer(window))
        if qualifiers:
            last = qualifiers[-1]
            context = last.group(0)
            external = last.group("external") is not None and not context.lower().endswith("method.md")
            if external and ADJACENT.fullmatch(window[last.end() :]):
                document = "external"
        line = text.count("\n", 0, m.start()) + 1
        numbers = [m.group("first"), *NUMBER.findall(m.group("rest") or "")]
        for number in numbers:
            found.append(Citation(path, line, number, document, context))
        previous_end = m.end()
    return found


def scan(root: Path, use_git: bool = True) -> list[Citation]:
    result: list[Citation] = []
    for f in repository_files(root, use_git):
        text = _read_text(f)
        if text is None or SECTION not in text:
            continue
        result.extend(citations_in_text(text, f.relative_to(root).as_posix()))
    return result


def method_headings(method_doc: Path) -> set[str]:
    """Section numbers that have a heading in the method document (fenced code blocks ignored)."""
    numbers: set[str] = set()
    in_fence = False
    for line in method_doc.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        m = HEADING.match(line)
        if m:
            numbers.add(m.group("num"))
    return numbers


def _sort_key(number: str) -> tuple[int, ...]:
    return tuple(int(p) for p in number.split("."))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=REPO, help="repository root (default: this checkout)")
    p.add_argument("--method", type=Path, help="the method document (default: ROOT/docs/method.md)")
    p.add_argument("--list", action="store_true", help="list every cited section number")
    p.add_argument("--external", action="store_true", help="also list citations of other documents")
    p.add_argument("--no-git", action="store_true", help="walk the folder instead of asking git")
    args = p.parse_args(argv)

    root = args.root.resolve()
    method_doc = args.method or root / METHOD_DOC
    if not method_doc.is_file():
        print(f"check_doc_refs: {method_doc} does not exist", file=sys.stderr)
        return 1
    headings = method_headings(method_doc)
    cites = scan(root, use_git=not args.no_git)
    method = [c for c in cites if c.document == "method"]
    external = [c for c in cites if c.document == "external"]

    if args.list:
        by_number: dict[str, list[Citation]] = defaultdict(list)
        for c in method:
            by_number[c.number].append(c)
        print(f"{len(method)} method citations of {len(by_number)} section numbers:")
        for number in sorted(by_number, key=_sort_key):
            where = by_number[number]
            files = sorted({c.path for c in where})
            status = "ok" if number in headings else "MISSING"
            shown = ", ".join(files[:3]) + (f" (+{len(files) - 3} files)" if len(files) > 3 else "")
            print(f"  {SECTION}{number:<8} {len(where):4d}x  {status:7s}  {shown}")
    if args.external:
        print(f"{len(external)} citations of other documents (not checked):")
        for c in external:
            print(f"  {c.path}:{c.line}: {c.context} {SECTION}{c.number}")

    missing = [c for c in method if c.number not in headings]
    if missing:
        print(
            f"check_doc_refs: {len(missing)} citation(s) with no heading in {METHOD_DOC.as_posix()}:",
            file=sys.stderr,
        )
        for c in sorted(missing, key=lambda c: (c.path, c.line, _sort_key(c.number))):
            print(f"  {c.path}:{c.line}: {SECTION}{c.number}", file=sys.stderr)
        return 1
    if not args.list:
        n_numbers = len({c.number for c in method})
        print(f"check_doc_refs: {len(method)} citations of {n_numbers} sections, all resolve")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
