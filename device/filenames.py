"""What is kept for each input, named once for the service, its reader process, triage and the
results page. The service's store holds one folder per input:

    <id>/original.<ext>       the input as received (ext lower-cased)
    <id>/original_flat.png    a photographed film, flattened (what the model read)
    <id>/gradcam.jpg          the overlay
"""

ORIGINAL_STEM = "original"
FLAT_SUFFIX = "_flat.png"  # after the input's stem: also `device film --keep DIR` names files so
GRADCAM = "gradcam.jpg"
FLAT = ORIGINAL_STEM + FLAT_SUFFIX
SERVED = (GRADCAM, FLAT)  # what the results page may send from a result's folder


def original(suffix: str) -> str:
    return f"{ORIGINAL_STEM}{suffix.lower()}"
