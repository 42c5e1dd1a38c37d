"""Receive radiographs from a CR reader or digitiser over the network: a DICOM C-STORE SCP.

`python -m device serve --dicom-port N --ae-title NAME` runs it beside the watched folders. It is
one more intake: each instance received becomes a file in the service's own inbox
(DATA/inbox/dicom/), and from there it goes through the same queue, the same checks and the same
once-only record as a file dropped in a watched folder. The service removes it from the inbox
once its record is written and the store keeps the copy it read; an instance the reader could
not read, or that was refused, is moved to DATA/unread/ instead, never deleted.

Durability: the instance is written to a temporary file in the data folder, fsync'd, renamed into
the inbox and the inbox fsync'd, and only then is Success (0x0000) returned: a reader that got
Success may delete its copy, because a power cut now cannot lose it. Anything short of that
returns a failure status, so the reader keeps its copy and sends it again later.

What it accepts: the storage SOP classes a CR/DX reader sends (CR, DX for presentation and for
processing, secondary capture), with C-ECHO for verification, in the transfer syntaxes this
device can decode (uncompressed always; compressed ones only where pydicom has a working decoder
here). What it refuses, and how the reader hears it:
- a calling AE title not on the allow-list (when one is set): the association is rejected;
- more associations at once than allowed: rejected (transient), the reader tries again;
- a SOP class or transfer syntax it cannot read: that presentation context is rejected at
  association, so the reader knows before it sends (and can send it uncompressed);
- a dataset larger than one image may be (the watched folders' limit): failure 0xC000, which a
  reader does not retry (the same bytes will be as large again), and the association is aborted
  as soon as the bytes received pass the limit by 1 MB, so it never fills the disk;
- a full disk, or too little room beside the dataset: 0xA700 (out of resources): the reader
  keeps it and retries, as with any storage failure.
The same SOP Instance sent again with the same bytes is acknowledged and not queued twice (the
queue records each content once); sent again with other bytes (a corrected image) it is queued as
what it is: a new image. Nothing identifying is logged, and nothing identifying names a file
(instances are named by the sha256 of their UID and of their bytes).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple

from edge_runtime.dicom import DEFLATED

from .fileops import disk_space, fsync_dir

log = logging.getLogger("fracture_edge.dicom")

# Storage SOP classes a CR/DX reader or film digitiser sends.
STORAGE_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
}
UNCOMPRESSED = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2", DEFLATED, "1.2.840.10008.1.2.2")
# Compressed syntaxes a reader may offer; each is accepted only where a decoder is available here.
COMPRESSED = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
              "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",
              "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.5")
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
TOO_LARGE = 0xC000  # a failure the reader should not retry: the same bytes will be as large again


class ReceiverError(RuntimeError):
    """The receiver cannot start as configured; the message says why."""


def decodable_syntaxes() -> Tuple[str, ...]:
    """The transfer syntaxes this device can turn into pixels: uncompressed, and each compressed
    one for which pydicom has a decoder with a working plugin installed."""
    out = list(UNCOMPRESSED)
    try:
        from pydicom.pixels import get_decoder
    except ImportError:
        return tuple(out)
    for uid in COMPRESSED:
        try:
            if get_decoder(uid).is_available:
                out.append(uid)
        except (NotImplementedError, ValueError, KeyError):
            continue
    return tuple(out)


def valid_ae_title(title: str) -> bool:
    """1 to 16 characters of printable ASCII without backslash, not only spaces."""
    return 0 < len(title) <= 16 and title.strip() != "" and all(32 <= ord(c) < 127 and c != "\\" for c in title)


@dataclass
class ReceiverConfig:
    port: int
    ae_title: str = "FRACTURE_EDGE"
    host: str = "0.0.0.0"
    allowed: Tuple[str, ...] = ()  # calling AE titles accepted; empty: any
    max_associations: int = 4
    max_bytes: int = 256 * 2 ** 20  # one dataset: the service's limit for one image file
    reserve_bytes: int = 16 * 2 ** 20  # kept free beside a dataset
    syntaxes: Tuple[str, ...] = field(default_factory=tuple)  # default: decodable_syntaxes()

    def check(self) -> None:
        if not 0 <= self.port < 65536:
            raise ReceiverError(f"--dicom-port must be within 1..65535 (0: any free port), got {self.port}")
        for title in (self.ae_title, *self.allowed):
            if not valid_ae_title(title):
                raise ReceiverError(f"{title!r} is not an AE title (1-16 printable ASCII characters, no backslash)")
        if self.max_associations < 1:
            raise ReceiverError(f"--dicom-max-associations must be at least 1, got {self.max_associations}")


def uid_name(sop_instance_uid: str) -> str:
    """The sha256 of an instance's UID, which says nothing about the patient."""
    return hashlib.sha256(str(sop_instance_uid).strip().encode()).hexdigest()


def content_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Receiver:
    """A C-STORE and C-ECHO SCP writing each instance durably into `inbox`."""

    def __init__(self, inbox: Path, work: Path, config: ReceiverConfig,
                 on_stored: Optional[Callable[[Path], None]] = None):
        """`inbox`: where instances are queued for the service; `work`: a folder on the same disk
        for the transfers in progress (the data folder's own, readable by the service only)."""
        config.check()
        self.inbox, self.work, self.config = Path(inbox), Path(work), config
        self.on_stored = on_stored
        self._server = None
        self._lock = threading.Lock()  # the room check and the rename, one instance at a time
        self.counts = {"stored": 0, "duplicates": 0, "refused": 0, "aborted": 0}

    # --- start and stop ------------------------------------------------------------------------

    def start(self):
        import tempfile

        from pynetdicom import AE, _config, dimse_messages, evt
        from pynetdicom.sop_class import Verification

        for d in (self.inbox, self.work):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Received datasets go to a file, not memory (memory stays bounded whatever the size),
        # and that file is in the data folder: on the disk the inbox is on (a rename, not a
        # copy) and readable by the service user only, not in the world's /tmp. Only pynetdicom's
        # own temporary files are sent there; the process's tempfile default is left alone.
        _config.STORE_RECV_CHUNKED_DATASET = True
        work = self.work

        def in_work(*args, **kwargs):
            os.makedirs(work, mode=0o700, exist_ok=True)  # removed under us: made again
            return tempfile.NamedTemporaryFile(*args, **{**kwargs, "dir": str(work)})

        dimse_messages.NamedTemporaryFile = in_work
        self._clean_work()
        syntaxes = list(self.config.syntaxes or decodable_syntaxes())
        ae = AE(ae_title=self.config.ae_title)
        ae.maximum_associations = self.config.max_associations
        ae.require_calling_aet = list(self.config.allowed)
        ae.add_supported_context(Verification)
        for sop in STORAGE_CLASSES:
            ae.add_supported_context(sop, syntaxes)
        handlers = [(evt.EVT_C_STORE, self._store), (evt.EVT_C_ECHO, lambda event: SUCCESS),
                    (evt.EVT_DATA_RECV, self._watch_size), (evt.EVT_REJECTED, self._rejected),
                    (evt.EVT_ABORTED, self._aborted)]
        try:
            self._server = ae.start_server((self.config.host, self.config.port), block=False, evt_handlers=handlers)
        except OSError as exc:
            raise ReceiverError(f"cannot listen for DICOM on {self.config.host}:{self.config.port} "
                                f"({exc.strerror or exc}); another program uses the port? choose --dicom-port") from None
        log.info("DICOM receiver %s listening on %s:%d (%s)", self.config.ae_title, self.config.host, self.port,
                 f"calling AE titles: {', '.join(self.config.allowed)}" if self.config.allowed else "any calling AE title")
        return self

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server else self.config.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _clean_work(self) -> None:
        """Transfers a kill cut short are removed: their reader got no Success, so it sends them again."""
        for p in self.work.iterdir():
            if p.is_file() and not p.is_symlink():
                p.unlink()

    # --- events ----------------------------------------------------------------------------------

    def _watch_size(self, event) -> None:
        """Abort an association whose data passes one dataset's limit (plus a margin for the
        command sets and other instances on it): it must never fill the disk."""
        assoc = event.assoc
        got = getattr(assoc, "_fracture_edge_bytes", 0) + len(event.data)
        assoc._fracture_edge_bytes = got
        if got > self.config.max_bytes + 2 ** 20 and not getattr(assoc, "_fracture_edge_aborting", False):
            assoc._fracture_edge_aborting = True
            self.counts["aborted"] += 1
            log.warning("DICOM: an association from %s sent more than %d MB: aborted", _peer(event),
                        self.config.max_bytes // 2 ** 20)
            threading.Thread(target=assoc.abort, daemon=True).start()

    def _rejected(self, event) -> None:
        log.warning("DICOM: association from %s rejected (AE title %s not allowed, or too many at once)",
                    _peer(event), _calling(event))

    def _aborted(self, event) -> None:
        """An association cut mid-transfer leaves no partial file behind (its reader got no Success)."""
        log.info("DICOM: association from %s aborted", _peer(event))
        message = getattr(getattr(event.assoc, "dimse", None), "message", None)
        partial = getattr(message, "_data_set_file", None)
        if partial is not None:  # unlinked, not closed: the reactor may still write the last fragments to it
            try:
                os.unlink(partial.name)
            except OSError:
                pass

    def _store(self, event) -> int:
        """Queue one instance; Success only once it is on disk for good."""
        event.assoc._fracture_edge_bytes = 0  # counted per dataset from here on
        try:
            path = Path(event.dataset_path)
            size = path.stat().st_size
        except (AttributeError, OSError) as exc:
            log.error("DICOM: a C-STORE from %s has no dataset on disk (%s)", _peer(event), exc)
            return CANNOT_UNDERSTAND
        if size > self.config.max_bytes:
            self.counts["refused"] += 1
            log.warning("DICOM: an instance from %s is %d MB, more than the %d MB one image may be: refused",
                        _peer(event), size // 2 ** 20, self.config.max_bytes // 2 ** 20)
            return TOO_LARGE
        try:
            name = f"{uid_name(event.request.AffectedSOPInstanceUID)[:32]}-{content_hash(path)[:32]}"
            with self._lock:
                if (self.inbox / f"{name}.dcm").exists():  # these very bytes wait in the queue already
                    self.counts["duplicates"] += 1
                    log.info("DICOM: an instance from %s is queued already: acknowledged", _peer(event))
                    return SUCCESS
                free, _ = disk_space(self.inbox)
                if free < size + self.config.reserve_bytes:
                    raise OSError(errno.ENOSPC, "not enough room beside it")
                final = self._queue(path, name)
            self.counts["stored"] += 1
            log.info("DICOM: instance from %s queued (%d KB)", _peer(event), size // 1024)
            if self.on_stored is not None:
                self.on_stored(final)
            return SUCCESS
        except OSError as exc:
            self.counts["refused"] += 1
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            log.error("DICOM: an instance from %s could not be kept (%s): %s", _peer(event),
                      exc.strerror or exc, "disk full, the reader will retry" if full else "the reader will retry")
            return OUT_OF_RESOURCES

    def _queue(self, path: Path, name: str) -> Path:
        """fsync the transfer, rename it into the inbox, fsync the inbox, then note the UID."""
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        final = self.inbox / f"{name}.dcm"
        os.replace(path, final)  # the transfer is in `work`, on the inbox's disk (start() sees to it)
        os.chmod(final, 0o600)
        fsync_dir(self.inbox)
        return final


def _peer(event) -> str:
    try:
        info = event.assoc.requestor
        return f"{info.address}:{info.port}"
    except AttributeError:
        return "?"


def _calling(event) -> str:
    try:
        return repr(event.assoc.requestor.ae_title)
    except AttributeError:
        return "?"


def start_receiver(data: Path, config: ReceiverConfig, on_stored=None) -> Receiver:
    """The receiver for a service whose data folder is `data`."""
    return Receiver(Path(data) / "inbox" / "dicom", Path(data) / "dicom-work", config, on_stored).start()


def parse_allowed(values: Sequence[str]) -> Tuple[str, ...]:
    """--dicom-allow AE (repeatable, or comma-separated)."""
    out = []
    for v in values:
        out += [t.strip() for t in v.split(",") if t.strip()]
    return tuple(out)
