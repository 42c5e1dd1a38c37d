"""What the service tests count as an answer, now that the model may refuse an input as outside
what it reads. The service's promises (one record per input, the right answer paired with the
right bytes) hold for both kinds of answer; the drawn test images (benchmarks.fuzz._radiograph)
are a bar on a gray field, which the reference bundle's out-of-scope gate refuses. An image's
answer is identified by its probability, or by the gate's score when it was refused: both are
continuous per image, so another image's answer still shows as a mismatch."""

from __future__ import annotations

from benchmarks.fsfuzz import answer_of  # noqa: F401 (the tests' import)
from edge_runtime.labels import NEGATIVE, OUT_OF_SCOPE, POSITIVE


def answered(rec) -> bool:
    """The model's verdict was recorded: a decision with a probability, or an out-of-scope refusal."""
    get = rec.get if isinstance(rec, dict) else (lambda k: getattr(rec, k, None))
    if get("error"):
        return False
    return (get("decision") in (POSITIVE, NEGATIVE) and get("probability") is not None) or get("decision") == OUT_OF_SCOPE


def in_scope_radiograph(seed: int = 0):
    """A phantom hand at the generator's own size (uint8): an image the reference bundle answers
    (what the gate keeps: scores about 0.5 of its limit), for tests that need the model's answer
    and its heatmap, not only a record."""
    import numpy as np

    from fracdata.phantom import render_phantom

    return render_phantom(np.random.default_rng(seed), "hand", False)
