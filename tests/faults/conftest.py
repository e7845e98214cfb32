"""The fault suite's bookkeeping: every case records its outcome, and the table is printed at
the end of the test session (docs/reliability.md shows it).

Outcomes: ``read correctly`` (valid input, right result), ``clear message`` (refused with an
error of the project's own types whose message names the file), ``traceback`` (any other
exception: a defect), ``silently wrong`` (accepted but wrong: a defect), ``data lost`` (a saved
thing gone: a defect). The tests fail on every defect; the table is for the reader.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import pytest

OUTCOMES = ("read correctly", "clear message", "traceback", "silently wrong", "data lost")
_RESULTS: dict[str, Counter] = defaultdict(Counter)
_DEFECTS: list[str] = []


class Recorder:
    def __init__(self, area: str):
        self.area = area

    def record(self, case: str, outcome: str, detail: str = "") -> str:
        assert outcome in OUTCOMES, outcome
        _RESULTS[self.area][outcome] += 1
        if outcome in OUTCOMES[2:]:
            _DEFECTS.append(f"{self.area} / {case}: {outcome} {detail}".strip())
        return outcome


@pytest.fixture
def recorder(request):
    area = request.node.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    return Recorder(area)


def classify(action, *, names: list[str | Path], expect_error: bool, check=None):
    """Run ``action()``; return (outcome, detail).

    A project error (ScanReadError, LabelError, WorkspaceError, ModelFileError, PlanError or a
    ValueError from the engine) whose message names one of ``names`` is a clear message; any
    other exception is a traceback. Success is "read correctly" when ``check(result)`` holds
    (or no check is given and no error was expected), else "silently wrong".
    """
    from napari_mtssl.workspace import WorkspaceError

    try:
        result = action()
    except (ValueError, OSError, WorkspaceError) as exc:  # the project's error types
        msg = str(exc)
        named = any(str(Path(n).name) in msg for n in names)
        one_line = "\n" not in msg.strip()
        if named and one_line:
            return "clear message", msg
        return "traceback", f"{type(exc).__name__}: {msg[:200]}"
    except Exception as exc:  # noqa: BLE001 - every other type is a defect to count
        return "traceback", f"{type(exc).__name__}: {str(exc)[:200]}"
    if expect_error:
        return "silently wrong", f"accepted: {result!r:.120}"
    if check is not None and not check(result):
        return "silently wrong", f"wrong result: {result!r:.120}"
    return "read correctly", ""


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _RESULTS:
        return
    tr = terminalreporter
    tr.section("fault suite: outcomes")
    head = "| area | " + " | ".join(OUTCOMES) + " | cases |"
    tr.write_line(head)
    tr.write_line("|---|" + "---|" * (len(OUTCOMES) + 1))
    total = Counter()
    for area in sorted(_RESULTS):
        c = _RESULTS[area]
        total.update(c)
        cells = " | ".join(str(c[o]) for o in OUTCOMES)
        tr.write_line(f"| {area} | {cells} | {sum(c.values())} |")
    cells = " | ".join(str(total[o]) for o in OUTCOMES)
    tr.write_line(f"| **all** | {cells} | {sum(total.values())} |")
    for d in _DEFECTS:
        tr.write_line(f"DEFECT {d}")
