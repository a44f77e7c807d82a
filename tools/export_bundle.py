"""Export a bundle as a standalone MONAI bundle folder (and zip) that works without this repository installed.

The export holds ``configs/``, ``docs/``, ``LICENSE``, the bundle's ``scripts/`` and the trained ``models/model.pt``.
The modules of ``common`` that the bundle needs (those its configs and scripts name, and what they import in turn)
are copied into ``scripts/common/``; every ``common.`` import in the copied code and every ``common.`` reference in
the configs becomes ``scripts.common.``, and ``bundle_root`` becomes ``"."``, as in MONAI model-zoo bundles. The
result loads in MONAI Label and runs with ``python -m monai.bundle run`` from the export folder::

    python -m tools.export_bundle ms_nf OUT --checkpoint bundles/ms_nf/models/model.pt --zip

The architecture needs no settings: ``models/model.pt`` describes its network (:mod:`common.checkpoint`) and the
exported configs read ``image_size``, ``n_blocks``... from it, so a model trained with any overrides exports as it is.
Other config values are baked in with ``--set KEY=VALUE`` (e.g. ``--set score_method=max``); a value that contradicts
the checkpoint's architecture is refused. Only a checkpoint written before descriptions existed needs its
architecture given with ``--set``.

``--torchscript`` also writes ``models/model.ts``, the traced fp32 TorchScript graph of the exported
``models/model.pt``, made by :func:`tools.torchscript.export_torchscript` (MONAI's ``ckpt_export``) and checked against
the eager network (equal to 1e-4, :data:`tools.torchscript.TOLERANCE`). If that step fails, the export fails with a
one-line error naming the bundle and the cause, and nothing is left behind::

    python -m tools.export_bundle ms_nf OUT --checkpoint bundles/ms_nf/models/model.pt --torchscript --zip
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.checkpoint import stored_arguments
from common.io import atomic_output
from tools.bundles import PACKAGE_ROOT, bundle_dir
from tools.torchscript import export_torchscript

__all__ = ["VENDOR_PACKAGE", "common_closure", "export_bundle", "main", "rewrite_config", "rewrite_source"]

VENDOR_PACKAGE = "scripts.common"
"""Where ``common`` lives inside an exported bundle."""
COMMON_ROOT = PACKAGE_ROOT / "common"
_CONFIG_REFERENCE = re.compile(r"(?<![\w.@#])common\.(\w+)")
_IMPORT_LINE = re.compile(r"^(\s*)(from|import)\s+common(?=[.\s])", flags=re.M)
_BUNDLE_PARTS = ("configs", "docs", "scripts", "LICENSE")


def _common_modules_in_source(source: str) -> set[str]:
    """Names of the ``common`` modules a Python source imports (``{"volumes", ...}``)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] == "common":
                if len(parts) > 1:
                    names.add(parts[1])
                else:
                    names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "common" and len(parts) > 1:
                    names.add(parts[1])
    return names


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _common_modules_in_config(config: Any) -> set[str]:
    return {m.group(1) for s in _strings(config) for m in _CONFIG_REFERENCE.finditer(s)}


def common_closure(roots: set[str]) -> list[str]:
    """The ``common`` modules ``roots`` need, following their imports of other ``common`` modules.

    Raises:
        ValueError: when a referenced module does not exist in ``common``.
    """
    todo, found = sorted(roots), set()
    while todo:
        name = todo.pop()
        if name in found:
            continue
        path = COMMON_ROOT / f"{name}.py"
        if not path.is_file():
            msg = f"common.{name} is referenced but {path} does not exist"
            raise ValueError(msg)
        found.add(name)
        todo.extend(sorted(_common_modules_in_source(path.read_text()) - found))
    return sorted(found)


def rewrite_source(source: str) -> str:
    """Point every ``common`` import of a Python source at the vendored copy (``scripts.common``)."""
    return _IMPORT_LINE.sub(lambda m: f"{m.group(1)}{m.group(2)} {VENDOR_PACKAGE}", source)


def rewrite_config(config: Any, settings: Mapping[str, Any] | None = None) -> Any:
    """Point every ``common.`` reference of a parsed config at ``scripts.common.``; ``bundle_root`` becomes ``"."``.

    ``settings`` replace top-level values the config defines (e.g. ``{"score_method": "max"}``).
    """
    if isinstance(config, dict) and settings:
        config = {key: settings.get(key, value) for key, value in config.items()}
    if isinstance(config, dict):
        return {key: "." if key == "bundle_root" else rewrite_config(value) for key, value in config.items()}
    if isinstance(config, list):
        return [rewrite_config(value) for value in config]
    if isinstance(config, str):
        return _CONFIG_REFERENCE.sub(lambda m: f"{VENDOR_PACKAGE}.{m.group(1)}", config)
    return config


def _copy_bundle(source: Path, target: Path) -> None:
    for part in _BUNDLE_PARTS:
        path = source / part
        if not path.exists():
            msg = f"{source}: bundle has no {part}"
            raise ValueError(msg)
        if path.is_dir():
            shutil.copytree(path, target / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, target / part)


def _vendor_common(target: Path, settings: Mapping[str, Any]) -> list[str]:
    configs = [json.loads(p.read_text()) for p in sorted((target / "configs").glob("*.json"))]
    scripts = sorted((target / "scripts").glob("*.py"))
    roots = set().union(*(_common_modules_in_config(c) for c in configs))
    roots |= set().union(*(_common_modules_in_source(p.read_text()) for p in scripts))
    modules = common_closure(roots)
    vendor = target / "scripts" / "common"
    vendor.mkdir()
    shutil.copy2(COMMON_ROOT / "__init__.py", vendor / "__init__.py")
    for name in modules:
        shutil.copy2(COMMON_ROOT / f"{name}.py", vendor / f"{name}.py")
    for path in [*scripts, *sorted(vendor.glob("*.py"))]:
        path.write_text(rewrite_source(path.read_text()))
    for path in sorted((target / "configs").glob("*.json")):
        config = rewrite_config(json.loads(path.read_text()), settings)
        path.write_text(json.dumps(config, indent=4, ensure_ascii=False) + "\n")
    return modules


def _check_architecture(settings: Mapping[str, Any], checkpoint: Path) -> None:
    """Refuse a setting that differs from the architecture ``checkpoint`` stores (it would fail when loaded)."""
    stored = stored_arguments(checkpoint)
    for key, value in settings.items():
        if key in stored and json.loads(json.dumps(value)) != stored[key]:
            msg = (
                f"--set {key}={json.dumps(value)}: {checkpoint} was trained with {key}={json.dumps(stored[key])}; "
                "drop the setting (the exported configs read the architecture from the checkpoint)"
            )
            raise ValueError(msg)


def _write_torchscript(name: str, staging: Path, target: Path) -> None:
    """``staging/models/model.ts`` from ``staging/models/model.pt`` (:mod:`tools.torchscript`), checked against eager.

    Raises:
        ValueError: one line naming the bundle and the cause (paths in the staging folder are given as in ``target``).
    """
    models = staging / "models"
    try:
        export_torchscript(name, models / "model.pt", models / "model.ts")
    except Exception as error:  # ckpt_export, loading the checkpoint or the eager network raise several types
        lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()] or [type(error).__name__]
        cause = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
        cause = cause.replace(str(staging.resolve()), str(target.resolve())).replace(str(staging), str(target))
        msg = f"bundle {name!r}: TorchScript export failed: {cause}"
        raise ValueError(msg) from error


def _remove_created(folders: list[Path]) -> None:
    """Remove the folders the export created (deepest first), as long as they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def export_bundle(
    name: str,
    output_dir: str | Path,
    checkpoint: str | Path,
    make_zip: bool = False,
    settings: Mapping[str, Any] | None = None,
    torchscript: bool = False,
) -> Path:
    """Export bundle ``name`` to ``output_dir/<name>`` (and ``output_dir/<name>.zip`` with ``make_zip``).

    The folder is assembled under a temporary name in ``output_dir`` and renamed when complete; when a step fails,
    neither it nor the ``output_dir`` folders this call created are left behind.

    Args:
        name: bundle folder name, e.g. ``"ms_nf"``.
        output_dir: where the export goes.
        checkpoint: the trained ``model.pt`` to ship.
        make_zip: also write a zip archive of the folder.
        settings: config values to bake into every config that defines them (``{"score_method": "max"}``). The
            architecture comes from the checkpoint, which describes its network (:mod:`common.checkpoint`); only a
            checkpoint written before descriptions existed needs it here (``{"image_size": [128, 128]}``).
        torchscript: also write ``models/model.ts``, traced from the exported ``models/model.pt`` by
            :func:`tools.torchscript.export_torchscript` and checked against the eager network.

    Returns:
        The exported bundle folder.

    Raises:
        ValueError: for an unknown bundle, an export folder that already exists, a setting no config defines, a
            setting that contradicts the architecture the checkpoint stores, an unreadable checkpoint, or (with
            ``torchscript``) a TorchScript export that fails or differs from the eager network.
        FileNotFoundError: when the checkpoint does not exist.
    """
    source = bundle_dir(name)
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        msg = f"{checkpoint}: checkpoint not found; train first (python -m monai.bundle run training ...)"
        raise FileNotFoundError(msg)
    settings = dict(settings or {})
    known = set().union(*(json.loads(p.read_text()) for p in sorted((source / "configs").glob("*.json"))))
    unknown = sorted(set(settings) - known)
    if unknown:
        msg = f"settings {unknown} are not defined by any config of bundle {name!r}"
        raise ValueError(msg)
    _check_architecture(settings, checkpoint)
    output_dir = Path(output_dir)
    target = output_dir / name
    if target.exists():
        msg = f"{target}: already exists; remove it or choose another output folder"
        raise ValueError(msg)
    created = [folder for folder in [output_dir, *output_dir.parents] if not folder.exists()]
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=output_dir))
    try:
        _copy_bundle(source, staging)
        (staging / "models").mkdir()
        shutil.copy2(checkpoint, staging / "models" / "model.pt")
        _vendor_common(staging, settings)
        if torchscript:
            _write_torchscript(name, staging, target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_created(created)
        raise
    if make_zip:
        with atomic_output(output_dir / f"{name}.zip") as tmp:
            shutil.make_archive(str(tmp)[: -len(".zip")], "zip", output_dir, name)  # it appends ".zip" itself
    return target


def _setting(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        msg = f"expected KEY=VALUE, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv: list[str] | None = None) -> int:
    """Command line: ``uad-export BUNDLE OUT [--checkpoint model.pt] [--set KEY=VALUE ...] [--torchscript] [--zip]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", help="bundle name (ms_nf, dnfad, skip_ts, anomalypro)")
    parser.add_argument("output_dir", type=Path, help="the export goes to OUTPUT_DIR/<bundle>")
    parser.add_argument("--checkpoint", type=Path, help="trained model.pt (default: bundles/<bundle>/models/model.pt)")
    parser.add_argument(
        "--set",
        dest="settings",
        type=_setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config value to bake in (JSON value, e.g. score_method=max); the architecture comes from the "
        "checkpoint, give it only for a checkpoint that does not describe its network",
    )
    parser.add_argument(
        "--torchscript",
        action="store_true",
        help="also write models/model.ts (tools.torchscript: ckpt_export traced from the exported model.pt, checked "
        "against eager)",
    )
    parser.add_argument("--zip", action="store_true", help="also write OUTPUT_DIR/<bundle>.zip")
    args = parser.parse_args(argv)
    try:
        checkpoint = args.checkpoint or bundle_dir(args.bundle) / "models" / "model.pt"
        target = export_bundle(
            args.bundle, args.output_dir, checkpoint, args.zip, dict(args.settings), torchscript=args.torchscript
        )
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
