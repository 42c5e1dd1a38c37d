"""Decisions and the words people read for them: one place for the runtime, the device's page and
CLIs, and the web app (whose build reads this module, so nothing is copied by hand)."""

POSITIVE = "fractured"
NEGATIVE = "non-fractured"
RETAKE = "retake"  # a photo of film the quality gate refused: no probability

WORDING = {
    POSITIVE: "FRACTURE SUSPECTED — refer / review",
    NEGATIVE: "no fracture found",
    RETAKE: "RETAKE PHOTO",
    "error": "could not read",
    "demonstration": "DEMONSTRATION MODEL (a research model, never validated on patients): not for patients",
}
SHORT = {POSITIVE: "FRACTURE SUSPECTED", NEGATIVE: "no fracture found", RETAKE: "RETAKE"}

DISCLAIMER = ("Screening aid only: a trained clinician makes the diagnosis. A negative result does not "
              "rule out a fracture.")


# On every overlay the device writes (the image may be forwarded without the text around it).
OVERLAY_DISCLAIMER = "Screening aid only: a clinician makes the diagnosis. No fracture found does not rule one out."
OVERLAY_BANNER = "DEMONSTRATION MODEL: research only, not for patients"


def demonstration_notice(manifest) -> str:
    """The CLIs' line for a demonstration bundle: what it was trained on, in the manifest's own words."""
    title = (manifest or {}).get("title") if isinstance(manifest, dict) else None
    return ("NOTE: this bundle is a DEMONSTRATION model, not for patients"
            + (f": {title}." if title else " (trained on phantom data)."))
