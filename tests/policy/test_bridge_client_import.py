"""The robot-side client must import on a computer without torch.

Each check runs in a fresh interpreter whose import system refuses torch (a sys.meta_path
finder that raises ImportError), then asserts that nothing heavy was pulled in indirectly.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BRIDGE = REPO / "policy" / "bridge"

BLOCKER = textwrap.dedent("""
    import sys
    from importlib.abc import MetaPathFinder

    class NoTorch(MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"torch is blocked in this test (importing {name!r})")
            return None

    sys.meta_path.insert(0, NoTorch())
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("blocker failed: torch imported")
""")

CHECK = textwrap.dedent("""
    heavy = sorted(m for m in sys.modules
                   if m.split(".")[0] in {"torch", "pybullet", "gymnasium", "hydra", "envs"})
    assert not heavy, f"client import pulled in {heavy}"
    assert callable(BridgeClient) and PROTOCOL_VERSION >= 1
    print("ok")
""")


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True,
                          text=True, timeout=60)


def test_client_imports_from_package_without_torch() -> None:
    code = BLOCKER + textwrap.dedent("""
        from policy.bridge.client import BridgeClient
        from policy.bridge.protocol import PROTOCOL_VERSION
    """) + CHECK
    result = run_python(code, REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_client_imports_as_two_copied_files_without_torch(tmp_path: Path) -> None:
    # A robot computer gets client.py + protocol.py, nothing else from robotok.
    for name in ("client.py", "protocol.py"):
        shutil.copy(BRIDGE / name, tmp_path / name)
    code = BLOCKER + textwrap.dedent("""
        from client import BridgeClient
        from protocol import PROTOCOL_VERSION
    """) + CHECK
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_blocker_really_blocks_torch(tmp_path: Path) -> None:
    # Guards the two tests above against a blocker that silently lets torch through.
    pytest.importorskip("torch")
    result = run_python(BLOCKER + "import torch\n", tmp_path)
    assert result.returncode != 0
    assert "torch is blocked" in result.stderr
