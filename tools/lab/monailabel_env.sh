#!/usr/bin/env bash
# Build the separate MONAI Label environment (default: .venv-monailabel under the repository root).
# MONAI Label 0.8.5 pins numpy<2 and its own DICOM stack, so it lives apart from the project's environment; the
# exported bundles (tools/export_bundle.py) need only their runtime packages there, not this repository.
# Usage: [UAD_TORCH_FROM=PYTHON] tools/lab/monailabel_env.sh [VENV_DIR]
# UAD_TORCH_FROM names the python of an environment with the same PyTorch (the project's .venv/bin/python): its
# torch, torchvision and CUDA libraries are hard-linked (tools/lab/link_torch.py) instead of unpacked again (~5 GB), and
# the rest is installed by uv when that environment has it (the project's dev extra does).
set -euo pipefail
cd "$(dirname "$0")/../.."
venv="${1:-.venv-monailabel}"
if [ -f "$venv/.complete" ]; then
    echo "$venv: already built"
    exit 0
fi
rm -rf "$venv"  # an interrupted build is started again
python3 -m venv "$venv"
install=("$venv/bin/pip" install -q)
if [ -n "${UAD_TORCH_FROM:-}" ]; then
    if "$UAD_TORCH_FROM" -m tools.lab.link_torch "$venv/bin/python"; then
        # With PyTorch in place, uv (beside that python, when installed) resolves and installs the rest in a fraction
        # of pip's time. Without it uv would download PyTorch itself, so pip (which finds the local wheels) does.
        uv="$(dirname "$UAD_TORCH_FROM")/uv"
        if [ -x "$uv" ]; then install=("$uv" pip install -q --python "$venv/bin/python"); fi
    else
        echo "PyTorch not linked: installing it"
    fi
fi
"${install[@]}" torch==2.14.1 torchvision==0.29.1
# MONAI Label's wheel names its data folder (the sample apps) with a build tag that only pip places correctly.
"$venv/bin/pip" install -q --no-deps "monailabel==0.8.5"
"${install[@]}" "monailabel==0.8.5" "pydicom<3" "pynetdicom<3" "dicomweb-client<0.60" \
    FrEIA timm scikit-learn scikit-image scipy nibabel matplotlib deepbet
touch "$venv/.complete"
echo "$venv: built"
