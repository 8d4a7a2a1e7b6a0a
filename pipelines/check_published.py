"""Published values: where each one comes from, and a check that it is really there.

Every published value in ``pipelines/catalog.yaml`` (a row's ``paper:``) and in ``pipelines/published_pending.yaml``
names its source in one fixed form, so that a reader can find it and this module can verify it::

    atld.txt Table I, lines 186-194, row ATLD, column PGD CW20 (PGD), number 3

= in ``../shared/papers/atld.txt``, among lines 186 to 194 (1-based, inclusive), the line holding the row label
``ATLD`` followed by numbers; the value is the 3rd number after the label. ``column`` is the paper's column header
for the reader (the extracted headers are too damaged to locate a column by name; ``number`` is what is checked).
An optional ``(note)`` may follow the number. Numbers are counted after removing markup (``<b>``, ``<i>``), the
paper's ± std annotations (``0.57(± 0.02)``, ``5.81 \\pm 0.05``) and the separators ``|``, ``/`` and tabs; a ``-``
(the paper reports none) counts as a position; a trailing ``%`` or ``*`` is dropped.

Run by hand where the paper texts exist (they are not part of the repository, so this is not in the test suite)::

    python -m pipelines.check_published                       # ../shared/papers relative to the repository
    python -m pipelines.check_published --papers DIR FILE.yaml ...

It prints one line per value and exits 0 when every value is found where its source says, 1 when some is not, 2 on
bad input (a missing papers directory or file, a malformed source).
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[1]
FORM = "FILE.txt TABLE, lines A-B, row ROW, column COLUMN, number K[ (note)]"
_SOURCE = re.compile(r"^(?P<file>[\w.-]+\.txt) (?P<table>[^,]+), lines? (?P<a>\d+)(?:-(?P<b>\d+))?, "
                     r"row (?P<row>.+?), column (?P<column>.+), number (?P<k>\d+)(?: \((?P<note>.*)\))?$")
_NUM = re.compile(r"^\d+(?:\.\d*)?[%*]*$")
_STD = re.compile(r"\(\s*±\s*[\d.]+\s*\)|\\pm\s*[\d.]+|±\s*[\d.]+")


@dataclass(frozen=True)
class Source:
    file: str
    table: str
    first: int  # 1-based line numbers, inclusive
    last: int
    row: str
    column: str
    number: int  # 1-based position among the numbers after the row label
    note: str = ""


def parse_source(text: str) -> Source:
    """The parts of a source string; ValueError saying the expected form when it does not match."""
    m = _SOURCE.match(text.strip())
    if m is None:
        raise ValueError(f"source {text!r} is not of the form {FORM!r}")
    a, b, k = int(m["a"]), int(m["b"] or m["a"]), int(m["k"])
    if not 1 <= a <= b or k < 1:
        raise ValueError(f"source {text!r}: lines must be 1 <= A <= B and number K >= 1")
    return Source(m["file"], m["table"], a, b, m["row"], m["column"], k, m["note"] or "")


def normalize(line: str) -> str:
    """A table line without markup, std annotations and separators; single spaces."""
    line = re.sub(r"<[^>]+>", "", line)
    line = _STD.sub(" ", line)
    line = re.sub(r"[|/\t]", " ", line)
    return " ".join(line.split())


def row_numbers(lines: list[str], row: str) -> list[list[str]]:
    """For every place in ``lines`` where the label ``row`` stands as whole words and is followed by at least one
    number (or ``-``): the numbers after it, up to the first token that is neither (the next row's label)."""
    label = normalize(row)
    found = []
    for line in map(normalize, lines):
        for m in re.finditer(rf"(?:^|(?<= )){re.escape(label)}(?= |$)", line):
            nums = []
            for tok in line[m.end():].split():
                if tok != "-" and not _NUM.match(tok):
                    break
                nums.append(tok)
            if nums:
                found.append(nums)
    return found


def check_value(text: str, src: Source, value: float) -> str | None:
    """None when ``value`` is the ``src.number``-th number after ``src.row`` within ``src``'s lines of ``text``;
    otherwise what was found instead."""
    lines = text.splitlines()
    if src.last > len(lines):
        return f"lines {src.first}-{src.last} beyond the end of {src.file} ({len(lines)} lines)"
    found = row_numbers(lines[src.first - 1:src.last], src.row)
    if len(found) != 1:
        return (f"row {src.row!r} followed by numbers occurs {len(found)} times in lines {src.first}-{src.last} "
                "(must be exactly once: correct the row label or narrow the lines)")
    nums = found[0]
    if src.number > len(nums):
        return f"row {src.row!r} has only {len(nums)} numbers: {' '.join(nums)}"
    tok = nums[src.number - 1]
    if tok == "-":
        return f"number {src.number} of row {src.row!r} is '-' (the paper reports none)"
    if abs(float(tok.rstrip("%*")) - value) > 1e-9:
        return f"number {src.number} of row {src.row!r} is {tok}, not {value:g}"
    return None


def iter_published(raw: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, entry) for every published entry of a catalogue (``tables: [{rows: [{paper: ...}]}]``) or of a
    pending file (``TABLE: {ROW: {COLUMN: entry}}``)."""
    if "tables" in raw:
        for t in raw.get("tables") or []:
            for r in t.get("rows") or []:
                for col, entry in (r.get("paper") or {}).items():
                    yield f"{t['name']} / {r['label']} / {col}", entry
    else:
        for table, rows in raw.items():
            for row, cols in (rows or {}).items():
                for col, entry in (cols or {}).items():
                    yield f"{table} / {row} / {col}", entry


def check_file(raw: dict[str, Any], papers: Path) -> tuple[list[str], int]:
    """One report line per published value (``ok``, ``empty`` or ``WRONG``) and the number of wrong ones."""
    out, wrong, cache = [], 0, {}
    for where, e in iter_published(raw):
        if not isinstance(e, dict) or e.get("value") is None:
            out.append(f"empty  {where}: {(e or {}).get('note', '') if isinstance(e, dict) else e}")
            continue
        try:
            src = parse_source(str(e.get("source", "")))
        except ValueError as err:
            out.append(f"WRONG  {where}: {err}")
            wrong += 1
            continue
        if src.file not in cache:
            p = papers / src.file
            cache[src.file] = p.read_text(encoding="utf-8") if p.is_file() else None
        text = cache[src.file]
        problem = f"{papers / src.file} not found" if text is None else check_value(text, src, float(e["value"]))
        if problem:
            out.append(f"WRONG  {where} = {e['value']}: {problem}")
            wrong += 1
        else:
            out.append(f"ok     {where} = {e['value']}  [{src.file} {src.table}, line {src.first}-{src.last}, "
                       f"row {src.row}, number {src.number}]")
    return out, wrong


def main(argv: list[str] | None = None) -> int:
    import yaml

    ap = argparse.ArgumentParser(prog="python -m pipelines.check_published", description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", type=Path,
                    default=[REPO / "pipelines" / "catalog.yaml", REPO / "pipelines" / "published_pending.yaml"])
    ap.add_argument("--papers", type=Path, default=REPO.parent / "shared" / "papers",
                    help="directory holding the papers' text files (default: ../shared/papers)")
    args = ap.parse_args(argv)
    if not args.papers.is_dir():
        print(f"error: papers directory {args.papers} not found; pass --papers DIR", file=sys.stderr)
        return 2
    total = bad = 0
    for f in args.files:
        if not f.is_file():
            print(f"error: {f} not found", file=sys.stderr)
            return 2
        lines, wrong = check_file(yaml.safe_load(f.read_text(encoding="utf-8")) or {}, args.papers)
        print(f"# {f.name}")
        print("\n".join(lines))
        checked = sum(not x.startswith("empty") for x in lines)
        print(f"# {f.name}: {checked - wrong} of {checked} values found where their source says; "
              f"{len(lines) - checked} left empty with a note\n")
        total, bad = total + checked, bad + wrong
    print(f"{'ALL OK' if not bad else f'{bad} WRONG'}: {total - bad} of {total} published values verified against "
          f"{args.papers}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
