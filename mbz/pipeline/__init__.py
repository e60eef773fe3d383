"""The tools that make checkpoints worth packing: data, training, pruning, quantization, measurement.

Importing this package needs only torch / torchvision / numpy (GPU machines lack zstandard and wandb).
"""
