"""Running the ``starloc`` command from the benchmarks that go through the CLI (run as
``python bench/<name>.py``; this folder is on ``sys.path``)."""

from __future__ import annotations

import subprocess
import sys


def starloc(*args: str) -> None:
    """``starloc ARGS`` in a fresh interpreter of this Python (the installed package), quiet;
    CalledProcessError when it exits non-zero."""
    cmd = [sys.executable, "-c", "import sys; from starloc.cli import main; sys.exit(main())", *args]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
