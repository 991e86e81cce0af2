"""The search's live status line."""

import io

from nas.progress import Progress


def test_status_line_counts_and_ticks_between_events():
    out = io.StringIO()
    progress = Progress(step=1, total=4, stream=out)
    progress.tick()  # nothing changed, less than a minute passed: no new line in a log
    assert out.getvalue() == ""
    progress.finished(0.25, running=1)
    progress.finished(None, failed=True, running=0)
    lines = out.getvalue().splitlines()
    assert lines[-1].startswith("step 1: 2/4 done (1 failed), 0 running | best hard AP 0.250")
    progress._shown -= 61  # a minute without events: the log gets a fresh line (elapsed, ETA)
    progress.tick()
    assert len(out.getvalue().splitlines()) == 3
