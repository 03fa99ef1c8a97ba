#!/usr/bin/env bash
# Builds the venv in which LeRobot's own dataset reader checks robotok's exports
# (scripts/check_lerobot_dataset.py, tests/envs/test_lerobot_export.py). It stays apart from
# robotok's .venv: lerobot-dataset (LeRobot's dataset code as a package of its own) pins
# datasets<4.2 and huggingface-hub<0.36, and reads video through torchcodec.
#   torch       the CPU build 2.13.0, found as scripts/setup_venv.sh finds it
#   torchcodec  0.13.0, the release built for torch 2.13; it needs FFmpeg's shared
#               libraries from the system (Debian/Ubuntu: apt-get install ffmpeg)
#   torchvision lerobot-dataset imports it at module level; only its image-file and
#               torchvision-video paths call it, never the video-with-torchcodec path. PyPI's
#               wheels link CUDA torch and do not load beside CPU torch, so the CPU build
#               comes from PyTorch's CPU index; where that index cannot be reached, a
#               stand-in module with the imported name (whose use raises) takes its place.
set -euo pipefail
VENV="${1:-.venv-lerobot}"
PYTHON="${PYTHON:-python3}"
CPU_INDEX="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"

if ! ldconfig -p 2>/dev/null | grep -q "libavcodec.so"; then
    echo "[lerobot-venv] torchcodec needs FFmpeg's shared libraries: apt-get install ffmpeg" >&2
    exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install --quiet --upgrade pip

local_wheel=""
for d in ${PIP_FIND_LINKS:-} $("$PY" -m pip config get global.find-links 2>/dev/null || true); do
    if ls "$d"/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then local_wheel=yes; fi
done
if [ -n "$local_wheel" ]; then
    "$PY" -m pip install --quiet "torch==2.13.0"
else
    "$PY" -m pip install --quiet "torch==2.13.0" --index-url "$CPU_INDEX"
fi
"$PY" -m pip install --quiet "lerobot-dataset==0.4.4" "torchcodec==0.13.0"

site=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
if ! "$PY" -c "import torchvision" 2>/dev/null; then
    # --no-deps: never a second torch. A mirror configured for pip may still hand out PyPI's
    # CUDA-linked wheel, so what counts is whether it imports.
    "$PY" -m pip install --quiet --retries 0 --timeout 15 --no-deps "torchvision==0.28.0" \
        --index-url "$CPU_INDEX" 2>/dev/null || true
fi
if ! "$PY" -c "import torchvision" 2>/dev/null; then
    "$PY" -m pip uninstall --quiet --yes torchvision 2>/dev/null || true
    echo "[lerobot-venv] no CPU torchvision from $CPU_INDEX: a stand-in module instead"
    mkdir -p "$site/torchvision"
    cat > "$site/torchvision/__init__.py" <<'PYEOF'
"""Stand-in for torchvision, written by robotok's scripts/setup_lerobot_venv.sh.

lerobot-dataset imports torchvision at module level; reading a video dataset with
torchcodec never calls it. Anything that does call it fails loudly here.
"""

from . import transforms  # noqa: F401

__version__ = "0+standin"
PYEOF
    cat > "$site/torchvision/transforms.py" <<'PYEOF'
"""Stand-in: torchvision.transforms is not installed in this venv."""


class ToTensor:
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("torchvision is a stand-in here (scripts/setup_lerobot_venv.sh)")
PYEOF
fi
"$PY" -c "import torch, torchcodec, ledataset.datasets.lerobot_dataset; print('[lerobot-venv] ready: torch', torch.__version__, 'torchcodec', torchcodec.__version__)"
