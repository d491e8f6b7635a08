"""Where the library reports what it is doing; the library itself never prints.

Messages go to the ``equiprune`` logger (:data:`logger`): per-epoch lines at INFO, a run that has
gone wrong but goes on at WARNING. Long work shows a progress bar from :func:`bar`, which its
caller switches off (``quiet``). What is shown is the caller's choice: the command line calls
:func:`show_messages` once; a Python caller configures ``logging`` as it likes (by default Python
shows warnings on stderr and nothing else). Importing equiprune configures nothing.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from tqdm.auto import tqdm

logger = logging.getLogger("equiprune")


#: What the warnings logged now concern (see :func:`concerning`): a context variable, so that runs
#: in different threads (or asyncio tasks) each keep their own label.
_label: ContextVar[str | None] = ContextVar("equiprune_concerning", default=None)


class _Concerning(logging.Filter):
    """Puts what a warning concerns (a run's directory, set by :func:`concerning`) in front of it."""

    def filter(self, record: logging.LogRecord) -> bool:
        label = _label.get()
        if label is not None and record.levelno >= logging.WARNING:
            label = label.replace("%", "%%") if record.args else label
            record.msg = f"{label}: {record.msg}"
        return True


logger.addFilter(_Concerning())  # a filter on our own logger: it shows nothing by itself


@contextmanager
def concerning(label: str) -> Iterator[None]:
    """Warnings logged inside begin with ``label``: the run they come from, so that a sweep's or a
    study's runs, side by side in one terminal, do not warn anonymously. The innermost label wins;
    each thread has its own."""
    token = _label.set(label)
    try:
        yield
    finally:
        _label.reset(token)


#: The level :func:`show_messages` set in this process (None: it was not called), so that worker
#: processes can show what their parent shows.
_shown_level: int | None = None


def bar(total: int, desc: str, unit: str, enabled: bool = True, initial: int = 0, leave: bool = True) -> tqdm:
    """A progress bar on stderr (a no-op object when not ``enabled``)."""
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave, disable=not enabled)


class _AboveTheBars(logging.Handler):
    """Writes each message on stderr through ``tqdm.write``, so that open bars stay whole; a
    warning reads ``equiprune: warning: ...``."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.levelno >= logging.WARNING:
                text = f"equiprune: {record.levelname.lower()}: {text}"
            tqdm.write(text, file=sys.stderr)
        except Exception:  # a broken stream must not end a run
            self.handleError(record)


def show_messages(level: int = logging.INFO) -> None:
    """Show the library's messages of ``level`` and above on stderr (the command line's set-up:
    INFO normally, WARNING with ``--quiet``). Calling it again only changes the level."""
    global _shown_level
    _shown_level = level
    logger.setLevel(level)
    if not any(isinstance(h, _AboveTheBars) for h in logger.handlers):
        logger.addHandler(_AboveTheBars())
    logger.propagate = False  # shown once, here, not again by a root handler


def shown_level() -> int | None:
    """What :func:`show_messages` set in this process, for a worker process to set the same."""
    return _shown_level
