"""Undo stacks for operations that touch several kernel objects.

Boundary: bookkeeping only. An operation registers an undo step after each
thing it makes; if the operation fails, the steps run newest first, every one
of them even when an earlier one fails (those failures are logged).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import TracebackType
from typing import Self

log = logging.getLogger(__name__)


class Rollback:
    def __init__(self, what: str) -> None:
        self.what = what
        self._steps: list[tuple[str, Callable[[], object]]] = []

    def push(self, description: str, undo: Callable[[], object]) -> None:
        self._steps.append((description, undo))

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self._steps.clear()
            return
        log.info("%s failed (%s); rolling back %d step(s)", self.what, exc, len(self._steps))
        while self._steps:
            description, undo = self._steps.pop()
            try:
                undo()
            except Exception:
                log.exception("rollback of %s: could not undo %s", self.what, description)
