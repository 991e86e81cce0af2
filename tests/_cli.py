"""Helpers for tests of the `facenas` command (imported as `from _cli import ...`)."""


def one_line_error(capsys) -> str:
    """The captured stderr, asserted to be one line and no traceback (a user mistake)."""
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err
