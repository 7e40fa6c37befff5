"""Capstone: your own image folder to an exported classifier, and predictions from it."""

from .demo import CLASS_NAMES, write_demo_folder
from .export import (
    DIGITS,
    SCRATCH,
    Exported,
    ExportError,
    backbone_names,
    build_model,
    image_paths,
    load_export,
    predict_images,
    preprocessing,
    save_export,
    to_tensor,
)
from .folder import FolderError, FolderScan, load_rgb, save_uploads, scan_folder, stratified_split
from .training import (
    MODES,
    TrainResult,
    images_per_second,
    load_tensors,
    metrics_from,
    top_losses,
    train_folder,
)

__all__ = [
    "CLASS_NAMES", "DIGITS", "MODES", "SCRATCH", "Exported", "ExportError", "FolderError",
    "FolderScan", "TrainResult", "backbone_names", "build_model", "image_paths",
    "images_per_second", "load_export", "load_rgb", "load_tensors", "metrics_from",
    "predict_images", "preprocessing", "save_export", "save_uploads", "scan_folder",
    "stratified_split", "to_tensor", "top_losses", "train_folder", "write_demo_folder",
]
