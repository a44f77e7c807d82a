"""Atomic output files: write under a temporary name in the destination folder, then rename.

Every file the bundles write (maps, masks, CSV, JSON, figures) goes through :func:`atomic_output`, so an
interrupted run never leaves a half-written output behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_output"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed to ``path``, on error removed.

    The temporary name keeps the destination's suffixes (``.nii.gz``, ``.png``...) so writers that pick a format
    from the file name work unchanged, and the final file gets the usual permissions (``0o666`` less the umask).

    Example:
        >>> with atomic_output(tmp_dir / "scores.csv") as tmp:  # doctest: +SKIP
        ...     tmp.write_text("file,score")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ".tmp"
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
