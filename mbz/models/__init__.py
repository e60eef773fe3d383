"""The model layer: what a rebuilt network needs at inference.

Architecture builders and their registry, BatchNorm folding, activation
quantizers, and `load_model`.  It imports the core (mbz.reader, mbz.errors)
and nothing of mbz.pipeline or mbz.report.
"""
from .load import load_model  # noqa: F401
from .registry import ARCHITECTURES, arch_of, build_model, guess_arch, pipeline_arch  # noqa: F401
from .mobilenet_v2 import mobilenet_v2_cifar  # noqa: F401
