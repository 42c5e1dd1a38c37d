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
    "demonstration": "DEMONSTRATION MODEL (trained on synthetic images): not for patients",
}
SHORT = {POSITIVE: "FRACTURE SUSPECTED", NEGATIVE: "no fracture found", RETAKE: "RETAKE"}

DISCLAIMER = ("Screening aid only: a trained clinician makes the diagnosis. A negative result does not "
              "rule out a fracture.")
