"""Defaults and choices of the user-facing packing options, shared by the API (mbz.save, mbz.quantize,
mbz.ratedist) and the command line.  Imports nothing heavy (no torch, no numpy): `mbz --help` reads it."""
from __future__ import annotations

from .spec import Granularity

GRANULARITY_NAMES = tuple(g.name.lower() for g in Granularity)  # tensor, channel, group (spec table 4)
DEFAULT_INCLUDE = r".*weight$"   # tensors --wbits / --step quantize by default (float tensors of rank >= 2 only)
ZERO_SIGNS = ("keep", "drop")    # pack --zero-sign: keep the sign of -0.0 elements, or store them as +0.0
SIZE_EXP = 0.5                   # ratedist: the relative step grows as (n_t / SIZE_REF)^SIZE_EXP
SIZE_REF = 16384                 # n_t at which the relative step is `step` itself
DEADZONE = 0.0                   # ratedist: extra rounding toward zero, in steps (0 = plain rounding)
