"""``AttackKey``: the identity of one number an evaluation suite produces, with one format and one parse.

Written ``name[-steps][[objective]][@source]``:

- ``name``: the attack family as tables name it (``clean``, ``fgsm``, ``fgm-l2``, ``pgd``, ``cw``, ``l2grad``,
  ``aa``, ``fixed-set``); dash-separated words, none of them all digits;
- ``steps``: the iteration count of an iterative attack (``pgd-20``); absent for one-step attacks;
- ``objective``: the end-to-end objective an adaptive attack maximises (``pgd-20[both]``);
- ``source``: the model the adversarial examples were made on when it is not the evaluated one (a transfer source
  ``pgd-20@standard``, the fixed set's baseline ``fixed-set@baseline``).

The radius is not part of the key: a curve holds one key at many ε (each record carries its ε). How the number was
computed beyond this identity (EOT samples, AutoAttack's version, ...) is in the record's label and options.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

_WORD = r"[A-Za-z][A-Za-z0-9_.+()]*"
_NAME = rf"{_WORD}(?:-{_WORD})*"
_PART = r"[A-Za-z0-9_.+-]+"
_KEY = re.compile(rf"^(?P<name>{_NAME})(?:-(?P<steps>\d+))?(?:\[(?P<objective>{_PART})\])?(?:@(?P<source>{_PART}))?$")
_HEADER = {"clean": "clean", "fgsm": "FGSM", "pgd": "PGD", "cw": "CW", "aa": "AA", "l2grad": "L2",
           "fixed-set": "fixed set"}
FORMAT = "name[-steps][[objective]][@source], e.g. pgd-20, cw-100, pgd-20[both], fgsm@baseline"


@dataclass(frozen=True)
class AttackKey:
    """One suite number's identity (see the module docstring). ``str(key)`` formats, ``AttackKey.parse`` parses."""

    name: str
    steps: int | None = None
    objective: str | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not re.fullmatch(_NAME, self.name):
            raise ValueError(f"attack name {self.name!r}: use dash-separated words, none all digits ({FORMAT})")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise ValueError(f"attack {self.name!r}: steps={self.steps!r} must be an integer ≥ 1")
        for part in ("objective", "source"):
            v = getattr(self, part)
            if v is not None and (not isinstance(v, str) or not re.fullmatch(_PART, v)):
                raise ValueError(f"attack {self.name!r}: {part}={v!r} may hold only letters, digits and _ . + -")

    def __str__(self) -> str:
        s = self.name + (f"-{self.steps}" if self.steps is not None else "")
        s += f"[{self.objective}]" if self.objective is not None else ""
        return s + (f"@{self.source}" if self.source is not None else "")

    @classmethod
    def parse(cls, text: str) -> "AttackKey":
        m = _KEY.match(text.strip()) if isinstance(text, str) else None
        if m is None:
            raise ValueError(f"{text!r} is not an attack key; write {FORMAT}")
        steps = m["steps"]
        return cls(m["name"], int(steps) if steps else None, m["objective"], m["source"])

    @classmethod
    def coerce(cls, v: Any) -> "AttackKey":
        """An ``AttackKey`` from itself or its text (the pydantic validator of config fields)."""
        return v if isinstance(v, AttackKey) else cls.parse(v)

    def with_(self, **changes: Any) -> "AttackKey":
        return replace(self, **changes)

    @property
    def header(self) -> str:
        """Column / tick text: ``PGD-20 [both]`` (the source is the column's business)."""
        s = _HEADER.get(self.name, self.name.upper()) + (f"-{self.steps}" if self.steps is not None else "")
        return s + (f" [{self.objective}]" if self.objective is not None else "")


CLEAN = AttackKey("clean")
