"""A fracture map: per-location fracture logits from one inference, and the image's answer pooled
from that map alone (numpy only; the same arithmetic as training's pooling layer).

A map model emits one logit per cell of its last feature grid (`map`, (h, w)). The image's
probability is sigmoid(pool(map)): there is no separate image head, so the answer can only be
"fractured" where some place on the image looks like a fracture, and the heatmap a clinician sees
(sigmoid of each cell) is the very thing the answer was pooled from, not an explanation computed
afterwards. With several views, each view's map is turned back to the image's orientation and the
logit maps are averaged before pooling.

Poolings (chosen by measurement on validation; docs/results.md):
- `max`: the highest cell;
- `lse`: log-sum-exp with sharpness r, (1/r) log(mean(exp(r m))): between the mean (r -> 0) and
  the max (r -> inf), smooth, so every high cell gets gradient in training;
- `topk`: the mean of the k highest cells.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict

import numpy as np

POOLINGS = ("max", "lse", "topk")


@dataclass(frozen=True)
class MapPooling:
    kind: str = "lse"
    r: float = 4.0  # lse sharpness
    k: int = 4  # topk cells

    def __post_init__(self) -> None:
        if self.kind not in POOLINGS:
            raise ValueError(f"map pooling must be one of {', '.join(POOLINGS)}, got {self.kind!r}")
        if not (isinstance(self.r, (int, float)) and 0.1 <= float(self.r) <= 100.0):
            raise ValueError(f"lse sharpness r must be within [0.1, 100], got {self.r!r}")
        if not (isinstance(self.k, int) and not isinstance(self.k, bool) and 1 <= self.k <= 4096):
            raise ValueError(f"topk k must be an integer within [1, 4096], got {self.k!r}")

    def to_dict(self) -> Dict[str, Any]:
        if self.kind == "lse":
            return {"kind": "lse", "r": float(self.r)}
        if self.kind == "topk":
            return {"kind": "topk", "k": int(self.k)}
        return {"kind": "max"}

    @classmethod
    def parse(cls, text: str) -> "MapPooling":
        """'max', 'lse:4' or 'topk:8' (the CLIs' spelling) -> MapPooling; ValueError naming the problem."""
        kind, _, arg = str(text).partition(":")
        try:
            if kind == "lse":
                return cls("lse", r=float(arg or 4.0))
            if kind == "topk":
                return cls("topk", k=int(arg or 4))
            if kind == "max" and not arg:
                return cls("max")
        except ValueError as exc:
            raise ValueError(f"pooling {text!r}: {exc}") from None
        raise ValueError(f"pooling must be max, lse:R or topk:K, got {text!r}")

    def label(self) -> str:
        return {"lse": f"lse:{self.r:g}", "topk": f"topk:{self.k}", "max": "max"}[self.kind]

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "MapPooling":
        return cls(kind=d.get("kind", "lse"), r=float(d.get("r", 4.0)), k=int(d.get("k", 4)))

    def pool(self, logits: np.ndarray) -> float:
        """The image logit from a (h, w) map of cell logits."""
        m = np.asarray(logits, np.float64).reshape(-1)
        if self.kind == "max":
            return float(m.max())
        if self.kind == "topk":
            k = min(self.k, m.size)
            return float(np.sort(m)[-k:].mean())
        top = m.max()  # log-sum-exp, shifted so exp never overflows
        return float(top + np.log(np.mean(np.exp(self.r * (m - top)))) / self.r)


def sigmoid(x):
    """Numerically safe logistic function, for scalars and arrays alike."""
    x = np.asarray(x, np.float64)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1.0 + e)
    return out if out.ndim else float(out)


def map_logits(output: np.ndarray) -> np.ndarray:
    """The model's `map` output for one view, (1, h, w, 1) or (h, w), as a (h, w) float32 array."""
    a = np.asarray(output, np.float32)
    a = a.reshape(a.shape[-3:-1]) if a.ndim == 4 else a.reshape(a.shape[-2:])
    return a
