"""Inside a trained model: weight statistics per layer, BN gammas and prunable channels,
activation statistics from forward hooks, and a markdown + PNG report (``tools/inspect_model.py``).

Everything takes plain state dicts, modules and tensors (no Hydra), so a notebook can call it.
"""

from detector.inspection.activations import ActivationStats, activation_stats
from detector.inspection.report import Inspection, Thresholds, inspect_state, write_report
from detector.inspection.weights import LayerStats, bn_gammas, prunable_channels, weight_stats
from detector.modeling.blocks import block_name, layer_label

__all__ = [
    "ActivationStats",
    "Inspection",
    "LayerStats",
    "Thresholds",
    "activation_stats",
    "block_name",
    "bn_gammas",
    "inspect_state",
    "layer_label",
    "prunable_channels",
    "weight_stats",
    "write_report",
]
