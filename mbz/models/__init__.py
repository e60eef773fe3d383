"""The model layer: what a rebuilt network needs at inference.

Architecture builders and their registry (validated `arch` metadata, torchvision's classifiers
and our CIFAR variants), BatchNorm folding, activation quantizers, and `load_model`.  It imports
the core (mbz.reader, mbz.errors) and nothing of mbz.pipeline or mbz.report.
"""
from .load import load_model  # noqa: F401
from .registry import (ARCHITECTURES, arch_for_pack, arch_of, arch_of_module, architectures, build_model, check_fit,  # noqa: F401
                       complete_arch, guess_arch, parse_arch, pipeline_arch, shapes_of, strip_wrapper,
                       suggest_archs, validate_arch)
from .mobilenet_v2 import mobilenet_v2_cifar  # noqa: F401
