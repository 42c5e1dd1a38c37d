"""What a run or a bundle records about where it was made: package versions and file checksums.

`versions()` is the one helper for "which Python, platform and packages made this" (run.json,
the manifest's provenance); `package_version()` answers for one distribution. `sha256_file` is
the runtime's own (edge_runtime.bundle), so a file's checksum is computed one way everywhere:
in a split's record, a bundle's manifest and the device's verification. `versions` and
`package_version` need only the standard library.
"""

from __future__ import annotations

from edge_runtime.bundle import sha256_file  # noqa: F401 - one sha256 for every file, re-exported here
from edge_runtime.environment import package_version, versions  # noqa: F401 - the runtime's own, stdlib only
