"""One fingerprint of a file for every cache and hash in avser: its path,
size and modification time in nanoseconds (None, None when it is missing).

The feature store keys rows by it (a changed file is recomputed) and the
runs' data hash is built from it (a changed corpus is a different dataset).
"""

from __future__ import annotations

import os
from pathlib import Path


def file_fingerprint(path: str | Path) -> tuple[str, int | None, int | None]:
    try:
        stat = os.stat(path)
    except OSError:
        return str(path), None, None
    return str(path), stat.st_size, stat.st_mtime_ns
