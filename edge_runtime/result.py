"""One input's answer, as a type: the runtime builds a `Result`; the film path extends it
(`device.triage.Triaged`: mode, retake, the gate's verdict), the service extends that
(`device.service.Record`: id, where it came from, when). Each layer adds fields through its type,
not keys to a dict, and every layer writes the same JSON (`to_dict`: fields that are None are
left out, so the files, the results log and `--json` read as before). The web app's records use
the same field names (tests/test_webapp.py checks them against `field_names()`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, List, Mapping, Optional, Type, TypeVar

from .labels import OUT_OF_SCOPE, POSITIVE, RETAKE

R = TypeVar("R", bound="Result")


@dataclass
class Result:
    file: str
    model: Optional[str] = None
    backend: Optional[str] = None
    artifact: Optional[str] = None
    threshold: Optional[float] = None
    probability: Optional[float] = None
    probability_model: Optional[float] = None  # the model's own, where `probability` is calibrated (the log can be re-scored)
    decision: Optional[str] = None  # labels.POSITIVE, NEGATIVE, RETAKE or OUT_OF_SCOPE; None when it could not be read
    error: Optional[str] = None  # why there is no answer (the file, or the film in the photo)
    internal_error: Optional[bool] = None  # True: a failure of ours, not of the file (exit status 3)
    warnings: List[str] = field(default_factory=list)
    source: Any = None  # {"mode", "width", "height"} as stored; the service's Record keeps its path here
    views: Optional[int] = None  # how many orientations were averaged
    heatmap: Optional[str] = None  # the overlay written
    heatmap_errno: Optional[int] = None  # the overlay could not be written (ENOSPC: the service retries)
    timings_ms: Optional[Dict[str, float]] = None
    scope: Optional[Dict[str, Any]] = None  # the out-of-scope gate's measures and verdict (edge_runtime/scope.py)
    extra: Dict[str, Any] = field(default_factory=dict)  # keys of a newer writer, kept on a round trip

    @property
    def answered(self) -> bool:
        return self.probability is not None and not self.error

    @property
    def positive(self) -> bool:
        return self.decision == POSITIVE

    @property
    def retake_asked(self) -> bool:
        return self.decision == RETAKE

    @property
    def out_of_scope(self) -> bool:
        return self.decision == OUT_OF_SCOPE

    def to_dict(self) -> Dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if v is not None and k != "extra"}
        return {**self.extra, **out}

    @classmethod
    def from_dict(cls: Type[R], d: Mapping[str, Any]) -> R:
        known = field_names(cls)
        kw = {"file": "", **{k: v for k, v in d.items() if k in known and k != "extra"}}  # a log line may lack any key
        return cls(**kw, extra={k: v for k, v in d.items() if k not in known})

    def as_(self, cls: Type[R], **more: Any) -> R:
        """This result as a subtype, with the subtype's fields set: how a layer extends it."""
        return cls(**{f.name: getattr(self, f.name) for f in fields(self)}, **more)


def field_names(cls: Type[Result] = Result) -> set:
    return {f.name for f in fields(cls)}
