"""Evaluation of detections: results conversion, COCOeval metrics, the Pascal VOC metric, tables,
JSON writers."""
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
from detector.evaluation.voc_eval import (
    VOC_METRICS,
    ResultsFileError,
    evaluate_voc,
    format_voc_table,
    read_results_file,
    voc_ap,
)

__all__ = [
    "STAT_NAMES",
    "VOC_METRICS",
    "ResultsFileError",
    "detections_to_coco_results",
    "evaluate_coco",
    "evaluate_voc",
    "format_coco_table",
    "format_per_class_table",
    "format_voc_table",
    "pr_curves",
    "read_results_file",
    "save_metrics",
    "save_results",
    "voc_ap",
]
