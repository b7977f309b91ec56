"""COCO evaluation of detections: results conversion, COCOeval metrics, tables, JSON writers."""
from detector.evaluation.coco_eval import (
    STAT_NAMES,
    detections_to_coco_results,
    evaluate_coco,
    format_coco_table,
    format_per_class_table,
    pr_curves,
    save_metrics,
    save_results,
)

__all__ = [
    "STAT_NAMES",
    "detections_to_coco_results",
    "evaluate_coco",
    "format_coco_table",
    "format_per_class_table",
    "pr_curves",
    "save_metrics",
    "save_results",
]
