"""The data layer under `train` and `export`: reading datasets, splits, run directories and
provenance, with numpy and Pillow only (images are decoded by edge_runtime, the device's own
decoder). Never TensorFlow: a test imports every module here with it blocked.

- `fracdata.data`: `Record`, `Dataset`, `DataError`, the FracAtlas reader, `load_data` (where data
  comes from: --data, $FRACATLAS_DIR, ../shared, phantom) and the provenance it records;
- `fracdata.readers`: the other layouts (a folder per class, a YOLO export) and their detection;
- `fracdata.boxes`: fracture boxes from YOLO, COCO, VGG and PASCAL VOC annotations;
- `fracdata.phantom`: synthetic radiographs in FracAtlas's layout, deterministic by seed;
- `fracdata.split`: split files (save, load and check against the data, records per split);
- `fracdata.images`: records -> decoded, resized arrays (`load_images`, `LoadedSplit`);
- `fracdata.runs`: run directories (`run_dirs`, `read_run`, `dataset_for_run`);
- `fracdata.provenance`: `versions`, `package_version`, `sha256_file`;
- `fracdata.progress`: progress of long loops, on a terminal and off one.
"""
