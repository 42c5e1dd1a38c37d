"""Export stage (int8 TFLite and ONNX bundles): see issue 3; not built yet."""
