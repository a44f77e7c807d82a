"""Hard-link this environment's PyTorch into another virtual environment instead of unpacking it again.

The MONAI Label environment (``tools/lab/monailabel_env.sh``) needs the same PyTorch as the project's own: a CUDA build
of about 5 GB (torch, torchvision, Triton and the NVIDIA libraries) that takes minutes of one core to unpack. Hard
links share the installed files, so the second environment costs seconds and no disk. Each distribution's
``dist-info`` is linked with its files, so ``pip`` sees them as installed and adds only what is missing (their pure
Python requirements, which stay separate, so ``numpy<2`` there does not touch ``numpy`` here). Removing or upgrading
PyTorch in either environment unlinks only that environment's names.

Usage (run with the interpreter whose PyTorch is linked)::

    python -m tools.lab.link_torch TARGET_PYTHON
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

__all__ = ["LINKED_NAMES", "is_linked_distribution", "link_distributions", "main"]

LINKED_NAMES = ("torch", "torchvision", "triton")
"""Distributions linked by name; with them, every ``nvidia-*`` and ``cuda-*`` distribution (PyTorch's libraries)."""


def _normalise(name: str) -> str:
    """A distribution name as PEP 503 compares it."""
    return re.sub(r"[-_.]+", "-", name).lower()


def is_linked_distribution(name: str) -> bool:
    """Whether a distribution is part of the PyTorch install that is linked (not a pure Python requirement)."""
    normal = _normalise(name)
    return normal in LINKED_NAMES or normal.startswith(("nvidia-", "cuda-"))


def link_distributions(distributions: Iterable[metadata.Distribution], target: Path) -> list[Path]:
    """Hard-link the files of the PyTorch distributions among ``distributions`` into the ``target`` site-packages.

    Files outside a distribution's site-packages (console scripts, whose first line names this interpreter) are not
    linked. On any failure everything linked so far is removed before the error propagates, so the target is left as
    it was and can be installed into normally.

    Args:
        distributions: installed distributions (``importlib.metadata.distributions()``).
        target: the other environment's site-packages folder.

    Returns:
        The paths created under ``target``.

    Raises:
        FileExistsError: a file to link already exists in ``target``.
        OSError: a hard link cannot be made (``target`` on another file system).
    """
    created: list[Path] = []
    try:
        for distribution in distributions:
            if not is_linked_distribution(distribution.metadata["Name"]):
                continue
            site = Path(distribution.locate_file(""))
            for relative in distribution.files or ():
                if relative.parts and relative.parts[0] == "..":
                    continue
                source = site / relative
                if not source.is_file():
                    continue
                destination = target / relative
                destination.parent.mkdir(parents=True, exist_ok=True)
                os.link(source, destination)
                created.append(destination)
    except BaseException:
        for path in reversed(created):
            path.unlink(missing_ok=True)
        raise
    return created


def _site_packages_of(python: str) -> tuple[Path, str]:
    """The ``purelib`` folder and ``major.minor`` version of another interpreter."""
    code = "import sys, sysconfig; print(sysconfig.get_paths()['purelib']); print('%d.%d' % sys.version_info[:2])"
    lines = subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout.split("\n")
    return Path(lines[0]), lines[1]


def main(argv: list[str] | None = None) -> int:
    """Link this interpreter's PyTorch into the environment of ``TARGET_PYTHON``; 1 with one line when it cannot."""
    parser = argparse.ArgumentParser(prog="python -m tools.lab.link_torch", description=__doc__.split("\n\n")[0])
    parser.add_argument("target_python", help="the other environment's python")
    args = parser.parse_args(argv)
    target, version = _site_packages_of(args.target_python)
    here = "{}.{}".format(*sys.version_info[:2])
    if version != here:
        message = f"tools.lab.link_torch: {args.target_python} is Python {version}, this is {here}: not linked"
        print(message, file=sys.stderr)
        return 1
    try:
        metadata.distribution("torch")
    except metadata.PackageNotFoundError:
        print(f"tools.lab.link_torch: no PyTorch in {sys.prefix}: nothing linked", file=sys.stderr)
        return 1
    try:
        created = link_distributions(metadata.distributions(), target)
    except OSError as error:
        print(f"tools.lab.link_torch: cannot link into {target}: {error}", file=sys.stderr)
        return 1
    print(f"tools.lab.link_torch: {len(created)} files linked into {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
