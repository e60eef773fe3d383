"""Verbs: compress (to be filled in)."""
from __future__ import annotations


def _todo(a) -> int:
    from ..errors import UsageError
    raise UsageError(f"'{a.cmd}' is not available yet")


def register(sub) -> None:
    sub.add_parser("compress", help="run a recipe: prune -> restart -> QAT -> soup -> reduce").set_defaults(fn=_todo)
