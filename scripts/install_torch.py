"""Install the PyTorch build this machine wants, before the project (``make install``).

pyproject.toml asks for ``torch>=2.2,<3``; on Linux a plain ``pip install torch`` is the
multi-GB CUDA build, useless without an NVIDIA GPU. So, in this order:

1. a torch already importable is kept (whatever build the user chose);
2. with an NVIDIA GPU (``nvidia-smi`` answers), the default build from the configured indexes;
3. without one, the CPU build from PyTorch's CPU wheel index when it answers within a few
   seconds (``TORCH_CPU_INDEX`` replaces it; dependencies still come from the usual indexes);
4. otherwise the configured indexes (a local mirror or wheel folder may hold a CPU build), and
   a warning if what came is a CUDA build on a machine without a GPU.

It says which it used. Run with the virtual environment's Python:
``.venv/bin/python scripts/install_torch.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.request

VERSION = os.environ.get("TORCH_VERSION", "2.13.0")
CPU_INDEX = os.environ.get("TORCH_CPU_INDEX", "https://download.pytorch.org/whl/cpu")


def installed() -> str | None:
    """The importable torch's version, or None (asked in a child: this process stays clean)."""
    r = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.__version__)"],
        capture_output=True,
        text=True,
    )
    return r.stdout.strip() if r.returncode == 0 else None


def has_nvidia_gpu() -> bool:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return False
    try:
        return subprocess.run([exe, "-L"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def reachable(url: str, timeout: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/torch/", timeout=timeout) as r:
            return r.status == 200
    except (OSError, ValueError):
        return False


def pip(*args: str) -> int:
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", *args, f"torch=={VERSION}"]
    return subprocess.run(cmd).returncode


def cuda_build() -> str | None:
    r = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.version.cuda or '')"],
        capture_output=True,
        text=True,
    )
    return r.stdout.strip() or None


def main() -> int:
    have = installed()
    if have:
        print(f"torch {have} is already installed: kept")
        return 0
    if has_nvidia_gpu():
        print(f"torch {VERSION}: an NVIDIA GPU answers, installing the default (CUDA) build")
        return pip()
    if reachable(CPU_INDEX):
        print(f"torch {VERSION}: no NVIDIA GPU, installing the CPU build from {CPU_INDEX}")
        if pip("--index-url", CPU_INDEX, "--extra-index-url", "https://pypi.org/simple") == 0:
            return 0
        print("the CPU index failed; trying the configured package indexes")
    else:
        print(
            f"torch {VERSION}: no NVIDIA GPU and {CPU_INDEX} does not answer; installing from "
            "the configured package indexes"
        )
    rc = pip()
    cuda = cuda_build() if rc == 0 else None
    if cuda:
        print(
            f"warning: pip installed a CUDA {cuda} build of torch on a machine without an "
            f"NVIDIA GPU (large and unused); set TORCH_CPU_INDEX to a CPU wheel index and run "
            "`make clean install` to replace it"
        )
    elif rc == 0:
        print(f"torch {installed()}: a CPU build")
    return rc


if __name__ == "__main__":
    sys.exit(main())
