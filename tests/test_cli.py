"""The command dispatcher: usage mistakes are one line and exit status 2."""

from _cli import facenas


def test_unknown_command_is_one_line_exit_2():
    result = facenas("frobnicate")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "frobnicate" in result.stderr


def test_no_command_prints_help_and_exit_2():
    result = facenas()
    assert result.returncode == 2
    assert "search" in result.stdout and "cost" in result.stdout
