#!/usr/bin/env bash
# Build the separate MONAI Label environment (default: .venv-monailabel under the repository root).
# MONAI Label 0.8.5 pins numpy<2 and its own DICOM stack, so it lives apart from the project's environment; the
# exported bundles (tools/export_bundle.py) need only their runtime packages there, not this repository.
# Usage: [UAD_TORCH_FROM=PYTHON] tools/monailabel_env.sh [VENV_DIR]
# UAD_TORCH_FROM names the python of an environment with the same PyTorch (the project's .venv/bin/python): its
# torch, torchvision and CUDA libraries are hard-linked (tools/link_torch.py) instead of unpacked again (~5 GB).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv-monailabel}"
if [ -f "$venv/.complete" ]; then
    echo "$venv: already built"
    exit 0
fi
rm -rf "$venv"  # an interrupted build is started again
python3 -m venv "$venv"
if [ -n "${UAD_TORCH_FROM:-}" ]; then
    "$UAD_TORCH_FROM" -m tools.link_torch "$venv/bin/python" || echo "PyTorch not linked: installing it"
fi
"$venv/bin/pip" install -q torch==2.14.1 torchvision==0.29.1
"$venv/bin/pip" install -q "monailabel==0.8.5" "pydicom<3" "pynetdicom<3" "dicomweb-client<0.60" \
    FrEIA timm scikit-learn scikit-image scipy nibabel matplotlib deepbet
touch "$venv/.complete"
echo "$venv: built"
