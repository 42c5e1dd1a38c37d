"""The three interpreters the device may have, behind one small interface.

`ai_edge_litert` is current (numpy 2); `tflite_runtime` is what older boards have (numpy 1.x
only); `onnxruntime` runs the ONNX artifacts. Each is imported only when chosen. A session takes
the preprocessed float image and returns float outputs by role ("prob", "features", "hidden"),
quantizing the input and dequantizing the outputs of an int8 model with the scale and zero point
the model file itself carries.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .bundle import Artifact, Bundle, BundleError
from .environment import held_stderr, package_version

# Preference order for `auto`: LiteRT int8 measured fastest here (docs/benchmarks.md); ARM is owed.
BACKENDS = ("litert", "tflite", "onnx")
BACKEND_CHOICES = ("auto",) + BACKENDS  # what every --backend flag accepts
_MODULE = {"litert": "ai_edge_litert.interpreter", "tflite": "tflite_runtime.interpreter",
           "onnx": "onnxruntime"}
_FORMAT = {"litert": "tflite", "tflite": "tflite", "onnx": "onnx"}


class BackendError(RuntimeError):
    """No interpreter can run this bundle as asked."""


def installed_backends() -> List[str]:
    found = []
    for name in BACKENDS:
        try:
            if importlib.util.find_spec(_MODULE[name].split(".")[0]) is not None:
                found.append(name)
        except (ImportError, ValueError):
            continue
    return found


def backend_version(name: str) -> Optional[str]:
    return package_version({"litert": "ai-edge-litert", "tflite": "tflite-runtime", "onnx": "onnxruntime"}[name])


def choose(bundle: Bundle, backend: str = "auto", artifact: Optional[str] = None) -> Tuple[str, Artifact]:
    """Pick (backend, artifact): an explicit artifact fixes the format; auto takes the best installed."""
    if backend != "auto" and backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose from auto, {', '.join(BACKENDS)}")
    have = installed_backends()
    candidates = [backend] if backend != "auto" else list(BACKENDS)
    tried = []
    for name in candidates:
        fmt = _FORMAT[name]
        art = bundle.artifact(artifact) if artifact else bundle.default_artifact(fmt)
        if art is None or art.format != fmt:
            tried.append(f"{name}: the bundle has no {fmt} artifact" + (f" named {artifact}" if artifact else ""))
            continue
        if name not in have:
            tried.append(f"{name}: {_MODULE[name]} is not installed")
            continue
        return name, art
    raise BackendError("no interpreter can run this bundle (" + "; ".join(tried) + ")")


def _quantize(x: np.ndarray, scale: float, zero_point: int, dtype) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(dtype)


def _roles_by_shape(shapes: Sequence[Tuple[int, ...]], expected: Dict[str, Dict], where: str) -> List[str]:
    """Name each model output by matching its shape (without batch) to the manifest's outputs."""
    roles = []
    for shape in shapes:
        match = [r for r, o in expected.items() if tuple(o["shape"][1:]) == tuple(shape[1:])]
        if len(match) != 1:
            raise BundleError(where, f"cannot tell which output has shape {tuple(shape)} "
                                     f"(manifest outputs: { {r: o['shape'] for r, o in expected.items()} })")
        roles.append(match[0])
    return roles


class TFLiteSession:
    def __init__(self, backend: str, artifact: Artifact, outputs: Dict[str, Dict], threads: Optional[int],
                 content: bytes):
        with held_stderr():  # LiteRT's "Created TensorFlow Lite XNNPACK delegate" on every load
            self._load(backend, artifact, outputs, threads, content)

    def _load(self, backend: str, artifact: Artifact, outputs: Dict[str, Dict], threads: Optional[int],
              content: bytes) -> None:
        module = importlib.import_module(_MODULE[backend])
        self._content = content  # the interpreter reads the model from this buffer: keep it alive
        self.delegate = "default (XNNPACK)"
        try:
            self.interpreter = module.Interpreter(model_content=content, num_threads=threads)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            # XNNPACK refuses some int8 graphs (LiteRT 2.3 on ResNet50's); the built-in kernels
            # still run them, slower but correct, and export's check then covers that path.
            resolver = getattr(getattr(module, "OpResolverType", None), "BUILTIN_WITHOUT_DEFAULT_DELEGATES", None)
            if resolver is None:
                raise BundleError(artifact.path, f"{backend} cannot load this model ({exc})") from None
            try:
                self.interpreter = module.Interpreter(model_content=content, num_threads=threads,
                                                      experimental_op_resolver_type=resolver)
                self.interpreter.allocate_tensors()
            except (ValueError, RuntimeError) as exc2:
                raise BundleError(artifact.path, f"{backend} cannot load this model ({exc}; without "
                                                 f"delegates: {exc2})") from None
            self.delegate = "none (XNNPACK refused the graph)"
        self.backend, self.artifact = backend, artifact
        self.input = self.interpreter.get_input_details()[0]
        details = self.interpreter.get_output_details()
        self.outputs = list(zip(_roles_by_shape([tuple(d["shape"]) for d in details], outputs, str(artifact.path)),
                                details))

    def input_shape(self) -> Tuple:
        return tuple(int(n) for n in self.input["shape"])

    def roles(self) -> set:
        """The output roles this model file gives."""
        return {role for role, _ in self.outputs}

    def io_spec(self) -> Dict[str, object]:
        """Input and output dtypes, scales and zero points as the model file carries them."""
        def q(d):
            return {"dtype": np.dtype(d["dtype"]).name, "scale": float(d["quantization"][0]),
                    "zero_point": int(d["quantization"][1])}
        return {"delegate": self.delegate, "input": q(self.input),
                "outputs": {role: q(d) for role, d in self.outputs}}

    def run(self, x: np.ndarray) -> Dict[str, np.ndarray]:
        x = np.asarray(x, dtype=np.float32).reshape(self.input["shape"])
        scale, zero = self.input["quantization"]
        if self.input["dtype"] != np.float32:
            x = _quantize(x, scale, zero, self.input["dtype"])
        self.interpreter.set_tensor(self.input["index"], x)
        self.interpreter.invoke()
        out = {}
        for role, d in self.outputs:
            y = self.interpreter.get_tensor(d["index"])
            if d["dtype"] != np.float32:
                s, z = d["quantization"]
                y = (y.astype(np.float32) - z) * s
            out[role] = y
        return out


class OnnxSession:
    def __init__(self, artifact: Artifact, outputs: Dict[str, Dict], threads: Optional[int], content: bytes):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(content, sess_options=opts,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BundleError(artifact.path, f"onnxruntime cannot load this model ({exc})") from None
        self.backend, self.artifact = "onnx", artifact
        self.input_name = self.session.get_inputs()[0].name
        names = [o.name for o in self.session.get_outputs()]
        missing = set(outputs) - set(names)
        if missing:
            raise BundleError(artifact.path, f"model lacks outputs {sorted(missing)}; it has {names}")
        self.names = list(outputs)

    def input_shape(self) -> Tuple:
        return tuple(n if isinstance(n, int) else None for n in self.session.get_inputs()[0].shape)

    def roles(self) -> set:
        """The output roles this model file gives (every manifest role: checked when the session opened)."""
        return set(self.names)

    def io_spec(self) -> None:
        return None  # float input and outputs; QDQ quantization lives inside the graph

    def run(self, x: np.ndarray) -> Dict[str, np.ndarray]:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 3:
            x = x[None]
        return dict(zip(self.names, self.session.run(self.names, {self.input_name: x})))


def open_session(bundle: Bundle, backend: str = "auto", artifact: Optional[str] = None,
                 threads: Optional[int] = None):
    name, art = choose(bundle, backend, artifact)
    outputs = bundle.manifest["model"]["outputs"]
    content = bundle.read_verified(art.info["file"])  # checked as read: what runs is what was verified
    session = (OnnxSession(art, outputs, threads, content) if name == "onnx"
               else TFLiteSession(name, art, outputs, threads, content))
    shape = session.input_shape()
    size = bundle.spec.size
    if len(shape) != 4 or any(isinstance(n, int) and n != want for n, want in zip(shape[1:], (size, size, 1))):
        raise BundleError(art.path, f"the model takes input {list(shape)}, but the manifest's preprocessing "
                                    f"makes {size} x {size} x 1 images")
    return session
