#!/usr/bin/env bash
# Creates the virtual environment (if missing) and installs robotok into it.
# torch: on a machine without an NVIDIA GPU we install the CPU build of torch 2.13.0
# (never the multi-GB CUDA build). pip takes it from a local wheel when one is on the
# find-links path, otherwise from PyTorch's CPU index. With a GPU, pip's default build
# (CUDA) is used. Override with TORCH_SPEC / TORCH_INDEX_URL.
set -euo pipefail
VENV="${1:-.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install --quiet --upgrade pip

if ! "$PY" -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "[setup] NVIDIA GPU found: installing pip's default (CUDA) $TORCH_SPEC"
        "$PY" -m pip install --quiet "$TORCH_SPEC"
    else
        local_wheel=""
        for d in ${PIP_FIND_LINKS:-} $("$PY" -m pip config get global.find-links 2>/dev/null || true); do
            if ls "$d"/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then local_wheel=yes; fi
        done
        if [ -n "${TORCH_INDEX_URL:-}" ]; then
            "$PY" -m pip install --quiet "$TORCH_SPEC" --index-url "$TORCH_INDEX_URL"
        elif [ -n "$local_wheel" ]; then
            echo "[setup] no GPU: installing the CPU build $TORCH_SPEC from the local wheel"
            "$PY" -m pip install --quiet "$TORCH_SPEC"
        else
            echo "[setup] no GPU: installing the CPU build $TORCH_SPEC from PyTorch's CPU index"
            "$PY" -m pip install --quiet "$TORCH_SPEC" --index-url https://download.pytorch.org/whl/cpu
        fi
    fi
fi
"$PY" -m pip install --quiet -e ".[dev]"
"$PY" -c "import torch; print('[setup] torch', torch.__version__, 'cuda' if torch.cuda.is_available() else 'cpu')"
