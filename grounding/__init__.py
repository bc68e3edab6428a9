"""Weakly-supervised video grounding: data, models, losses, metrics and a training engine.

Pure PyTorch/numpy/pyarrow. This package never imports ray or mlflow; orchestration does.
"""

__version__ = "0.1.0"
