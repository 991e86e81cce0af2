"""The command dispatcher: usage mistakes are one line and exit status 2."""

import subprocess
import sys


def _facenas(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nas.cli", *args], capture_output=True, text=True)


def test_unknown_command_is_one_line_exit_2():
    result = _facenas("frobnicate")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "frobnicate" in result.stderr


def test_no_command_prints_help_and_exit_2():
    result = _facenas()
    assert result.returncode == 2
    assert "search" in result.stdout and "cost" in result.stdout
