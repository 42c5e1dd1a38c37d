"""What the device sends to the district PACS about one answer, in the original's own study:

1. the original instance, as received;
2. a secondary-capture image of the overlay, with the decision, the probability, the disclaimer
   and (for a demonstration bundle) the demonstration flag burned into the pixels, so any viewer
   shows them;
3. a DICOM Structured Report (highdicom, Comprehensive SR) stating the model, the bundle's
   digest, the probability, the threshold, the decision and the disclaimer.

The SC and the SR copy the original's patient and study modules (highdicom does, from the
reference dataset) and get new series; their SOP Instance UIDs are derived from the record's id
and the original's UID, so building them again (after a restart) gives the same UIDs, and a PACS
that receives one twice keeps one.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from edge_runtime.labels import OVERLAY_DISCLAIMER, SHORT

MANUFACTURER = "fracture-edge"
# The SR's own codes for what DCM does not name (a private coding scheme, stated in the SR).
SCHEME = "99FRACEDGE"
ROOT_UID = "2.25."  # UUID-derived UIDs (PS3.5 B.2): no organisation root needed


def derived_uid(*parts: str) -> str:
    """A stable UID from the parts: 2.25 followed by a 128-bit number of their sha256."""
    digest = hashlib.sha256("|".join(parts).encode()).digest()[:16]
    return ROOT_UID + str(int.from_bytes(digest, "big"))


def overlay_text(record: Dict) -> List[str]:
    p = record.get("probability")
    lines = [SHORT.get(record.get("decision"), str(record.get("decision"))).upper()]
    if p is not None:
        lines.append(f"p = {p:.2f} (threshold {record.get('threshold', float('nan')):.2f})")
    if record.get("demonstration_only"):
        lines.append("DEMONSTRATION MODEL - NOT FOR PATIENT CARE")
    lines.append(OVERLAY_DISCLAIMER)
    lines.append(f"{record.get('model', '?')}, bundle {record.get('bundle_id', '?')}")
    return lines


def burned_overlay(overlay_path: Path, record: Dict) -> np.ndarray:
    """The overlay's RGB pixels with the answer's text in a band below it, wrapped to the
    image's width (never cut: the disclaimer must be read whole) (uint8, h x w x 3)."""
    from PIL import Image, ImageDraw, ImageFont

    with Image.open(overlay_path) as im:
        img = im.convert("RGB")
    if max(img.size) > 2048:
        img.thumbnail((2048, 2048))
    if img.width < 320:  # room for the text: a narrow overlay is enlarged, not the text shrunk
        img = img.resize((320, round(img.height * 320 / img.width)))
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(img)
    lines = []
    for k, text in enumerate(overlay_text(record)):
        lines += [(k, part) for part in _wrap(measure, text, font, img.width - 12)]
    line_h = 14
    band = Image.new("RGB", (img.width, line_h * len(lines) + 8), (0, 0, 0))
    draw = ImageDraw.Draw(band)
    for row, (k, line) in enumerate(lines):
        colour = (255, 80, 80) if k == 0 and record.get("decision") == "fractured" else (255, 255, 255)
        draw.text((6, 4 + row * line_h), line, fill=colour, font=font)
    out = Image.new("RGB", (img.width, img.height + band.height))
    out.paste(img, (0, 0))
    out.paste(band, (0, img.height))
    return np.asarray(out, dtype=np.uint8)


def _wrap(draw, text: str, font, width: int) -> List[str]:
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and draw.textlength(trial, font=font) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return lines + [line] if line else lines


def _orientation(original) -> Optional[Tuple[str, str]]:
    """The original's Patient Orientation (row, column directions), or None where it states none."""
    got = getattr(original, "PatientOrientation", None)
    if got and len(got) == 2 and all(str(v).strip() for v in got):
        return str(got[0]), str(got[1])
    return None


# Type 2 attributes of the patient and study modules: present, possibly empty. highdicom copies
# them from the original and refuses one that is absent or malformed; a CR reader may leave some
# out. The copy the SC and SR are made from gets them empty; the original is sent as it came.
TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID", "StudyDate", "StudyTime",
         "AccessionNumber", "ReferringPhysicianName")


def _reference(original):
    """The original's header, with what highdicom needs of it made well-formed (never guessed)."""
    import copy
    import re

    ref = copy.deepcopy(original)
    if "PixelData" in ref:
        del ref.PixelData  # the header is enough; no copy of a 40 MB frame
    for key in TYPE2:
        if key not in ref or ref.data_element(key).value is None:
            setattr(ref, key, "")
    sex = str(ref.PatientSex or "").strip().upper()
    ref.PatientSex = sex if sex in ("M", "F", "O") else ""
    for key, pattern in (("PatientBirthDate", r"\d{8}"), ("StudyDate", r"\d{8}"),
                         ("StudyTime", r"\d{2,6}(\.\d{1,6})?")):
        if not re.fullmatch(pattern, str(getattr(ref, key) or "").strip()):
            setattr(ref, key, "")
    return ref


def secondary_capture(original, overlay_path: Path, record: Dict):
    import highdicom as hd

    pixels = burned_overlay(overlay_path, record)
    uid = str(original.SOPInstanceUID)
    orientation = _orientation(original)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=_reference(original), pixel_array=pixels, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", patient_orientation=orientation or ("L", "F"),
        series_instance_uid=derived_uid("sc-series", record["id"], uid),
        series_number=9901, sop_instance_uid=derived_uid("sc", record["id"], uid), instance_number=1,
        manufacturer=MANUFACTURER, transfer_syntax_uid="1.2.840.10008.1.2.1",
        series_description="Fracture screening overlay (not diagnostic)")
    if orientation is None:
        sc.PatientOrientation = None  # Type 2: present and empty, where the original states none
    return sc


def structured_report(original, record: Dict):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    def code(value, meaning, scheme=SCHEME):
        return hd.sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)

    has = hd.sr.RelationshipTypeValues.CONTAINS
    items = [
        hd.sr.TextContentItem(code("111001", "Algorithm Name", "DCM"), str(record.get("model", "?")), has),
        hd.sr.TextContentItem(code("111003", "Algorithm Version", "DCM"), f"bundle {record.get('bundle_id', '?')}",
                              has),
        hd.sr.TextContentItem(code("121071", "Finding", "DCM"),
                              SHORT.get(record.get("decision"), str(record.get("decision"))), has),
    ]
    if record.get("probability") is not None:
        items.append(hd.sr.NumContentItem(code("PROB", "Fracture probability"), float(record["probability"]),
                                          codes.UCUM.NoUnits, relationship_type=has))
    if record.get("threshold") is not None:
        items.append(hd.sr.NumContentItem(code("THRESH", "Decision threshold"), float(record["threshold"]),
                                          codes.UCUM.NoUnits, relationship_type=has))
    items.append(hd.sr.TextContentItem(code("DISCL", "Disclaimer"), OVERLAY_DISCLAIMER, has))
    if record.get("demonstration_only"):
        items.append(hd.sr.TextContentItem(code("DEMO", "Demonstration model"),
                                           "a demonstration model, NOT for patient care", has))
    root = hd.sr.ContainerContentItem(code("FRACSCREEN", "Fracture screening result (not diagnostic)"))
    root.ContentSequence = items
    uid = str(original.SOPInstanceUID)
    return hd.sr.ComprehensiveSR(
        evidence=[_reference(original)], content=root, series_instance_uid=derived_uid("sr-series", record["id"], uid),
        series_number=9902, sop_instance_uid=derived_uid("sr", record["id"], uid), instance_number=1,
        manufacturer=MANUFACTURER, is_complete=True, is_final=False, is_verified=False,
        series_description="Fracture screening report (not diagnostic)")


class NotReferable(Exception):
    """This answer cannot be filed with a patient's study; the message says why (no tag values)."""


STUDY_KEYS = ("StudyInstanceUID", "SOPInstanceUID", "SOPClassUID")


def build(original_path: Path, overlay_path: Path, record: Dict) -> List[Tuple[str, bytes]]:
    """[(kind, DICOM file bytes)] for original, overlay SC and SR, in the order they are sent.
    NotReferable for an input that is not DICOM, lacks its study's identity, or has no overlay."""
    from io import BytesIO

    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    try:
        original = dcmread(original_path, stop_before_pixels=True)  # the header: the SC is made from the overlay
    except (InvalidDicomError, OSError, ValueError, TypeError, AttributeError):
        raise NotReferable("not a DICOM input (only DICOM studies can be filed with the patient)") from None
    missing = [k for k in STUDY_KEYS if not str(getattr(original, k, "") or "").strip()]
    if missing:
        raise NotReferable(f"the DICOM file has no {', '.join(missing)}: it cannot be filed in its study")
    if not Path(overlay_path).is_file():
        raise NotReferable("no overlay was made for it")
    out = [("original", Path(original_path).read_bytes())]
    try:
        made = (("overlay", secondary_capture(original, overlay_path, record)),
                ("report", structured_report(original, record)))
    except (ValueError, TypeError, AttributeError) as exc:  # highdicom on a missing or malformed attribute
        raise NotReferable(f"its DICOM attributes do not allow a report in its study ({type(exc).__name__})") from None
    for kind, ds in made:
        buf = BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append((kind, buf.getvalue()))
    return out
