"""Verbs: train, finetune, soup, reduce, sensitivity, prune-channels, activations (to be filled in)."""
from __future__ import annotations


def _todo(a) -> int:
    from ..errors import UsageError
    raise UsageError(f"'{a.cmd}' is not available yet")


def register(sub) -> None:
    sub.add_parser("train", help="train a baseline").set_defaults(fn=_todo)
    sub.add_parser("finetune", help="more QAT epochs for a packed model").set_defaults(fn=_todo)
    sub.add_parser("soup", help="average QAT runs of one pruned model").set_defaults(fn=_todo)
    sub.add_parser("reduce", help="hold scales and biases at reduced precision").set_defaults(fn=_todo)
    sub.add_parser("sensitivity", help="per-layer pruning sensitivity scan").set_defaults(fn=_todo)
    sub.add_parser("prune-channels", help="structured pruning of hidden channels").set_defaults(fn=_todo)
    sub.add_parser("activations", help="activation memory of a packed model").set_defaults(fn=_todo)
