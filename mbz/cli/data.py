"""Verbs: data (to be filled in)."""
from __future__ import annotations


def _todo(a) -> int:
    from ..errors import UsageError
    raise UsageError(f"'{a.cmd}' is not available yet")


def register(sub) -> None:
    sub.add_parser("data", help="make the CIFAR-10 JPEG export the figures are measured on").set_defaults(fn=_todo)
