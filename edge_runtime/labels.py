"""Decisions and the words people read for them: one place for the runtime, the device's page and
CLIs, and the web app (whose build reads this module, so nothing is copied by hand)."""

POSITIVE = "fractured"
NEGATIVE = "non-fractured"
RETAKE = "retake"  # a photo of film the quality gate refused: no probability
OUT_OF_SCOPE = "out-of-scope"  # not a radiograph of the kind the model reads (scope.py): no probability

WORDING = {
    POSITIVE: "FRACTURE SUSPECTED — refer / review",
    NEGATIVE: "no fracture found",
    RETAKE: "RETAKE PHOTO",
    OUT_OF_SCOPE: "OUTSIDE WHAT THIS MODEL READS — no answer; have a clinician read it",
    "error": "could not read",
    "demonstration": "DEMONSTRATION MODEL (a research model, never validated on patients): not for patients",
}
SHORT = {POSITIVE: "FRACTURE SUSPECTED", NEGATIVE: "no fracture found", RETAKE: "RETAKE",
         OUT_OF_SCOPE: "OUTSIDE WHAT THIS MODEL READS"}

OUT_OF_SCOPE_ADVICE = ("this model reads radiographs of limbs only; a chest, skull, CT, ultrasound, document or "
                       "screen is outside what it can read: have a clinician read the image")

DISCLAIMER = ("Screening aid only: a trained clinician makes the diagnosis. A negative result does not "
              "rule out a fracture.")


# On every overlay the device writes (the image may be forwarded without the text around it).
OVERLAY_DISCLAIMER = "Screening aid only: a clinician makes the diagnosis. No fracture found does not rule one out."
OVERLAY_BANNER = "DEMONSTRATION MODEL: research only, not for patients"


def refusal_text(scope) -> str:
    """Why an input was refused as outside what the model reads, and what to do: one line."""
    reason = (scope or {}).get("reason") or "not an image this model was trained to read"
    return f"{reason}; {OUT_OF_SCOPE_ADVICE}"


def demonstration_notice(manifest) -> str:
    """The CLIs' line for a demonstration bundle: what it was trained on, in the manifest's own words."""
    title = (manifest or {}).get("title") if isinstance(manifest, dict) else None
    return ("NOTE: this bundle is a DEMONSTRATION model, not for patients"
            + (f": {title}." if title else " (trained on phantom data)."))
