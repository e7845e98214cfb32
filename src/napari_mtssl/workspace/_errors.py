"""The workspace's error type."""

from __future__ import annotations


class WorkspaceError(RuntimeError):
    """A workspace that cannot be opened, read or changed. The message names the file or scan."""

    def __init__(self, path: object, problem: str):
        self.path = str(path)
        self.problem = " ".join(str(problem).split())  # one line: libraries' messages wrap
        super().__init__(f"{self.path}: {self.problem}")
