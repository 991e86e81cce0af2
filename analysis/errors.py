"""analysis/'s own error type, so that analysis/ imports nothing of ours (it reads results
tables only and runs without torch or the detectors package).

An AnalysisError is a mistake in what the user gave (a missing run directory, a table without the
metric column, a bad bootstrap setting): its message is one line saying what is wrong and where.
The `facenas` CLI reports it exactly like detectors.errors.UserError: one line, exit status 2.
"""

__all__ = ["AnalysisError"]


class AnalysisError(Exception):
    """A mistake in a results table, a ranges file or an analysis setting."""
