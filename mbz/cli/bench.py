"""Verbs: bench (to be filled in)."""
from __future__ import annotations


def _todo(a) -> int:
    from ..errors import UsageError
    raise UsageError(f"'{a.cmd}' is not available yet")


def register(sub) -> None:
    sub.add_parser("bench", help="inference latency of a packed model (batch 1 and 256, CPU and GPU)").set_defaults(fn=_todo)
