"""Model components: backbones, heads and the assembled detector."""

from detector.modeling.build import build_criterion, build_model
from detector.modeling.faster_rcnn import LOSS_NAMES, FasterRCNN, FasterRCNNCriterion

__all__ = ["LOSS_NAMES", "FasterRCNN", "FasterRCNNCriterion", "build_criterion", "build_model"]
