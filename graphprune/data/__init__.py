"""Detection data: YOLO-format datasets, converters for NWPU VHR-10 and RSOD, a synthetic
remote-sensing task, augmentation, and a deterministic dataset and loader.

    from graphprune.data import load_data_config, DetectionDataset, make_loader
    cfg = load_data_config("data.yaml")
    train = DetectionDataset(cfg.train, cfg.names, imgsz=640, augment=True, mosaic=True)
    loader = make_loader(train, batch_size=16, shuffle=True, workers=2)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for images, targets, paths, metas in loader: ...
"""

from .augment import (DEFAULT_HYP, flip_lr, flip_ud, hsv_jitter, jitter, letterbox, mosaic,
                      random_affine)
from .cli import add_data_parser
from .config import (ConversionReport, DataConfig, Sample, label_path, load_data_config,
                     write_yolo_dataset)
from .dataset import DetectionDataset, DetectionLoader, collate, make_loader
from .labels import parse_yolo_labels, read_yolo_labels, write_yolo_labels
from .nwpu import NWPU_NAMES, convert_nwpu, parse_nwpu_labels
from .rsod import RSOD_NAMES, convert_rsod, parse_voc_xml
from .synthetic import (SYNTHETIC_NAMES, make_synthetic_dataset, render_image,
                        write_synthetic_dataset)

__all__ = ["ConversionReport", "DEFAULT_HYP", "DataConfig", "DetectionDataset",
           "DetectionLoader", "NWPU_NAMES", "RSOD_NAMES", "SYNTHETIC_NAMES", "Sample",
           "add_data_parser", "collate", "convert_nwpu", "convert_rsod", "flip_lr", "flip_ud",
           "hsv_jitter", "jitter", "label_path", "letterbox", "load_data_config",
           "make_loader", "make_synthetic_dataset", "mosaic", "parse_nwpu_labels",
           "parse_voc_xml", "parse_yolo_labels", "random_affine", "read_yolo_labels",
           "render_image", "write_synthetic_dataset", "write_yolo_dataset",
           "write_yolo_labels"]
