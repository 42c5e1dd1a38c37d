"""Export stage: a trained float model -> a checked bundle (int8 and float TFLite and ONNX, the
Grad-CAM head, the manifest), in four steps (export/pipeline.py: prepare, convert, check,
publish). Data, splits and run directories come from fracdata; from train only the model registry
(train.models) and the float reference (train.reference)."""
