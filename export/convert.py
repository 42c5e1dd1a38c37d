"""Float Keras model -> the artifact files: int8 / float / float16 TFLite, float and int8 ONNX.

Every artifact is made from one *serving model*: the trained model with the Grad-CAM feature maps
(and the hidden ReLU layer, where the head has one) as extra outputs, so the runtime's heatmap
needs no gradient engine. TFLite goes through Keras's SavedModel export (the TFLite converter
cannot read Keras 3 models directly); ONNX goes through tf2onnx.convert.from_function, because
from_keras fails on Keras 3 models. Both int8 paths calibrate on the same images.
"""

from __future__ import annotations

import difflib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from fracdata.console import native_noise_filtered

ONNX_OPSET = 17


@dataclass(frozen=True)
class ArtifactKind:
    format: str  # tflite | onnx (edge_runtime.manifest.ARTIFACT_FORMATS)
    precision: str  # int8 | float32 | float16 (edge_runtime.manifest.PRECISIONS)
    file: str  # its file name in the bundle


# The formats export writes, as one table: key -> format, precision, file. The first three are what
# the issue requires (DEFAULT_ARTIFACTS), the others extra rows.
ARTIFACTS = {
    "tflite_int8": ArtifactKind("tflite", "int8", "model_int8.tflite"),
    "onnx_float": ArtifactKind("onnx", "float32", "model_float.onnx"),
    "onnx_int8": ArtifactKind("onnx", "int8", "model_int8.onnx"),
    "tflite_float": ArtifactKind("tflite", "float32", "model_float.tflite"),
    "tflite_float16": ArtifactKind("tflite", "float16", "model_float16.tflite"),
}
DEFAULT_ARTIFACTS = ("tflite_int8", "onnx_float", "onnx_int8")


def parse_artifacts(text: str) -> List[str]:
    """A comma list of artifact keys; ValueError naming each unknown key and the closest known one."""
    keys = [a.strip() for a in text.split(",") if a.strip()]
    if not keys:
        raise ValueError(f"no artifacts given; choose from {', '.join(ARTIFACTS)}")
    bad = []
    for k in keys:
        if k not in ARTIFACTS:
            close = difflib.get_close_matches(k, list(ARTIFACTS), n=1)
            bad.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    if bad:
        raise ValueError(f"unknown artifacts {', '.join(bad)}; choose from {', '.join(ARTIFACTS)}")
    return keys


def serving_model(model, feature_layer: Optional[str], hidden_layer: Optional[str], scope_layers: Sequence[str] = ()):
    """The model with named outputs: prob, features / hidden for the runtime's Grad-CAM, and
    'pooled' for the out-of-scope gate (given `scope_layers`)."""
    import keras

    outputs = {"prob": model.output}
    if feature_layer:
        outputs["features"] = model.get_layer(feature_layer).output
    if hidden_layer:
        outputs["hidden"] = model.get_layer(hidden_layer).output
    outputs.update(_pooled_output(model, scope_layers))
    return keras.Model(model.inputs, outputs, name=f"{model.name}_serving")


def map_serving_model(model, scope_layers: Sequence[str] = ()):
    """A fracture-map model's serving form: the map of cell logits, which the runtime pools
    (edge_runtime.fracture_map) and shows, so int8 never has to carry a pooling or a sigmoid; and
    'pooled' for the out-of-scope gate (given `scope_layers`)."""
    import keras

    outputs = {"map": model.get_layer("map").output, **_pooled_output(model, scope_layers)}
    return keras.Model(model.inputs, outputs, name=f"{model.name}_serving")


def _pooled_output(model, scope_layers: Sequence[str]) -> Dict:
    """{'pooled': the global average of each scope layer's features, side by side} (edge_runtime/scope.py)."""
    import keras

    if not scope_layers:
        return {}
    pooled = [keras.layers.GlobalAveragePooling2D(name=f"pooled_{n}")(model.get_layer(n).output) for n in scope_layers]
    return {"pooled": (keras.layers.Concatenate(name="pooled")(pooled) if len(pooled) > 1
                       else keras.layers.Identity(name="pooled")(pooled[0]))}


def output_spec(serving) -> Dict[str, Dict[str, List[int]]]:
    """{role: {"shape": [1, ...]}}: the runtime tells TFLite outputs apart by shape, so they must differ."""
    shapes = {k: [1] + [int(d) for d in t.shape[1:]] for k, t in serving.output.items()}
    rest = [tuple(s[1:]) for s in shapes.values()]
    if len(set(rest)) != len(rest):
        raise ValueError(f"serving outputs share a shape: {shapes}")
    return {k: {"shape": s} for k, s in shapes.items()}


def _representative(calibration: np.ndarray) -> Iterator[List[np.ndarray]]:
    for i in range(len(calibration)):
        yield [calibration[i:i + 1].astype(np.float32)]


def export_saved_model(serving, directory: Path) -> Path:
    """Once per model: every converter below starts from this SavedModel."""
    serving.export(str(directory), format="tf_saved_model", verbose=False)
    return Path(directory)


def to_tflite(saved_model: Path, precision: str, calibration: Optional[np.ndarray] = None) -> bytes:
    """Full-integer int8 (int8 input and outputs, calibrated), float32, or float16 weights."""
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if precision == "int8":
        if calibration is None or not len(calibration):
            raise ValueError("int8 TFLite needs calibration images")
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: _representative(calibration)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
    elif precision == "float16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    with native_noise_filtered():  # the calibrator prints its settings to stderr
        return conv.convert()


def to_onnx_float(saved_model: Path, outputs: Dict[str, Dict[str, List[int]]], path: Path) -> Path:
    """Through the frozen SavedModel signature: tf2onnx's from_function leaves some Keras 3 state
    (EfficientNet's Normalization constants) as graph inputs, which onnxruntime then demands."""
    import onnx
    import tensorflow as tf
    import tf2onnx
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    loaded = tf.saved_model.load(str(saved_model))  # must outlive the freezing: the signature only holds weak refs
    frozen = convert_variables_to_constants_v2(loaded.signatures["serving_default"])
    # Name each frozen output by its shape (output_spec guarantees the shapes differ).
    by_shape = {tuple(v["shape"][1:]): k for k, v in outputs.items()}
    roles = [by_shape[tuple(int(d) for d in t.shape[1:])] for t in frozen.outputs]
    inputs, outputs = [t.name for t in frozen.inputs], [t.name for t in frozen.outputs]
    proto, _ = tf2onnx.convert.from_graph_def(frozen.graph.as_graph_def(), input_names=inputs,
                                              output_names=outputs, opset=ONNX_OPSET)
    renames = {inputs[0]: "image", **dict(zip(outputs, roles))}
    graph = proto.graph
    for value in list(graph.input) + list(graph.output):
        value.name = renames.get(value.name, value.name)
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path


def to_onnx_int8(float_path: Path, path: Path, calibration: np.ndarray, quant_format: str = "QDQ",
                 activations: str = "QUInt8", reduce_range: bool = True) -> Path:
    """Static QDQ quantization, per-channel int8 weights, uint8 activations (MinMax calibration).

    Unsigned activations: with the gate's pooled output, the int8-activation graph ran 0.85x the
    float one on an AMD EPYC, this one 2.3x (docs/benchmarks.md), and x86's int8 dot product
    multiplies unsigned by signed bytes.
    reduce_range (7-bit weights) because x86 CPUs with AVX2 but no VNNI compute U8S8 with an
    instruction that can saturate; export's check on this machine would not see that. The other
    formats are for benchmarks.onnx_formats, which compares them."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        """The same images, in the same order, that the TFLite converter calibrates on."""

        def __init__(self):
            self._it = iter([{"image": calibration[i:i + 1].astype(np.float32)} for i in range(len(calibration))])

        def get_next(self):
            return next(self._it, None)

    reader = Reader()
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(float_path), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(path), reader, quant_format=getattr(QuantFormat, quant_format), per_channel=True,
                        activation_type=getattr(QuantType, activations), weight_type=QuantType.QInt8,
                        reduce_range=reduce_range)
    return path


def write_artifacts(keys: Sequence[str], serving, out_dir: Path,
                    calibration: np.ndarray) -> Iterator[Tuple[str, Path, float]]:
    """Write each requested artifact into out_dir, yielding (key, path, seconds) as each is done.

    One SavedModel serves every converter; float ONNX is made first when int8 ONNX needs it."""
    outputs = output_spec(serving)
    order = sorted(keys, key=lambda k: k != "onnx_float")
    with tempfile.TemporaryDirectory() as tmp:
        saved = export_saved_model(serving, Path(tmp) / "saved_model")
        onnx_float: Optional[Path] = None
        for key in order:
            t0 = time.time()
            kind = ARTIFACTS[key]
            path = out_dir / kind.file
            if kind.format == "tflite":
                path.write_bytes(to_tflite(saved, kind.precision, calibration if kind.precision == "int8" else None))
            elif kind.precision == "float32":
                onnx_float = to_onnx_float(saved, outputs, path)
            else:
                source = onnx_float or to_onnx_float(saved, outputs, Path(tmp) / "float.onnx")
                to_onnx_int8(source, path, calibration)
            yield key, path, time.time() - t0
