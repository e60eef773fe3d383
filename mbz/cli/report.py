"""Verbs: report (to be filled in)."""
from __future__ import annotations


def _todo(a) -> int:
    from ..errors import UsageError
    raise UsageError(f"'{a.cmd}' is not available yet")


def register(sub) -> None:
    sub.add_parser("report", help="write REPORT.md and REPORT.pdf from results/").set_defaults(fn=_todo)
