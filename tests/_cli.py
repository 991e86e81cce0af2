"""Helpers for tests of the `facenas` command (imported as `from _cli import ...`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def one_line_error(capsys) -> str:
    """The captured stderr, asserted to be one line and no traceback (a user mistake)."""
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def facenas(*args: str, timeout: float = 600, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess:
    """`facenas ARGS` in a subprocess (this interpreter), output captured as text."""
    return subprocess.run([sys.executable, "-m", "nas.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def fakes_pythonpath() -> str:
    """PYTHONPATH with tests/ and the repo first: Ray workers (which inherit it) can then
    import tests/search_fakes.py's trial functions."""
    return os.pathsep.join([str(TESTS), str(REPO), os.environ.get("PYTHONPATH", "")])
