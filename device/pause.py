"""Why the service stops taking work for a scan: nothing is recorded, the same files are taken
later. Raised by the queue, the readers and the outbox's caller; caught by the service loop."""


class Paused(Exception):
    """Stop taking work for this scan: nothing is recorded, the same files are taken later."""


class DiskFull(Paused):
    """No space to store an image or its record: stop taking work until there is."""


class DataUnavailable(Paused):
    """The data folder cannot be written (a read-only SD card, a folder of the wrong owner):
    a banner, and the service waits; no file is blamed for it."""
