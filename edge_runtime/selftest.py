"""A bundle's self-test: fixed images, and the probabilities export recorded for them.

A bundle that passes its checksums can still be wrong on a device: an interpreter build whose
kernels differ, a numpy or Pillow that resizes differently. Before a clinic switches to a new
bundle (`python -m device update`), the runtime answers the same few images export answered and
compares. The images are drawn from arithmetic alone (no random generator, no files), so every
machine makes exactly the same pixels: a bone with a displaced break, an intact bone, and two
of each at other angles and exposures.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np

GENERATOR = "edge_runtime.selftest v1"
N_IMAGES = 6
# Float kernels differ across CPUs in the last bits; int8 ones may round one step apart.
TOLERANCE = {"float32": 1e-3, "float16": 5e-3, "int8": 0.02}


def image(i: int, size: int = 320) -> np.ndarray:
    """The i-th self-test radiograph, (size, size) float32 in [0, 1]."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    angle = (i * 0.61) % 1.0 - 0.5
    broken = i % 2 == 0
    exposure = 0.8 + 0.1 * (i % 3)
    u = (xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle)  # across the bone
    v = -(xx - 0.5) * np.sin(angle) + (yy - 0.5) * np.cos(angle)  # along it
    if broken:
        u = u + np.where(v > 0.05, 0.035, 0.0)  # the distal fragment displaced
    soft = 0.25 + 0.15 * np.exp(-(u / 0.3) ** 2)
    cortex = np.exp(-((np.abs(u) - 0.06) / 0.012) ** 2)
    medulla = 0.35 * np.exp(-(u / 0.045) ** 2)
    img = soft + 0.5 * cortex + medulla
    if broken:
        img = img * (1.0 - 0.6 * np.exp(-((v - 0.05) / 0.008) ** 2) * (np.abs(u) < 0.09))
    img = img * exposure + 0.02 * np.sin(37.0 * xx + 23.0 * yy + i)  # a deterministic grain
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def probabilities(predictor) -> List[float]:
    """The predictor's answers on the self-test images, through THE preprocessing."""
    from .imageio import DecodedImage

    out = []
    for i in range(N_IMAGES):
        img = image(i)
        rec = predictor.predict_pixels(DecodedImage(img, "selftest", (img.shape[1], img.shape[0])), f"selftest_{i}",
                                       gate=False)  # drawn images: outside what a real model reads
        if rec.error:
            raise RuntimeError(f"self-test image {i} was refused: {rec.error}")
        out.append(float(rec.probability))
    return out


def record(bundle, artifacts: Dict[str, Any]) -> Dict[str, Any]:
    """What export writes into the manifest: per artifact, its answers on the self-test images.
    `artifacts` maps artifact key -> an open Predictor on it."""
    return {"generator": GENERATOR, "n": N_IMAGES, "tolerance": dict(TOLERANCE),
            "probabilities": {k: [round(p, 7) for p in probabilities(pred)] for k, pred in artifacts.items()}}


def run(bundle, backend: str = "auto", artifact: Optional[str] = None) -> Dict[str, Any]:
    """Answer the self-test images with the artifact this device would use and compare with export's.
    {"passed", "artifact", "backend", "max_abs_diff", "tolerance"}; passed is None if the bundle has none."""
    from .predictor import Predictor

    recorded = bundle.manifest.get("self_test")
    pred = Predictor(bundle, backend, artifact, threads=1, gradcam=False)
    if not recorded or pred.artifact not in recorded.get("probabilities", {}):
        return {"passed": None, "artifact": pred.artifact, "backend": pred.backend,
                "reason": "the bundle records no self-test answers for this artifact"}
    if recorded.get("generator") != GENERATOR:
        return {"passed": False, "artifact": pred.artifact, "backend": pred.backend,
                "reason": f"self-test made by {recorded.get('generator')!r}, this runtime has {GENERATOR!r}"}
    expected = np.asarray(recorded["probabilities"][pred.artifact], dtype=np.float64)
    got = np.asarray(probabilities(pred), dtype=np.float64)
    precision = bundle.artifact(pred.artifact).precision
    tol = float(TOLERANCE.get(precision, 1e-3))
    worst = float(np.max(np.abs(got - expected))) if expected.size == got.size else float("inf")
    return {"passed": bool(worst <= tol), "artifact": pred.artifact, "backend": pred.backend,
            "max_abs_diff": worst, "tolerance": tol, "expected": expected.tolist(), "got": got.tolist()}
