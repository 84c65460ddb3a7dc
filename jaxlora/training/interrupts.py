"""Clean interrupts: SIGINT and SIGTERM only set a flag; the loop stops between steps and saves.

Raising from inside a signal handler stops the program wherever it happens to be: after the state
was donated to a step (the arrays are gone, nothing can be saved), halfway through a metrics
record, inside XLA's compiler, or in interpreter shutdown. So the handlers here do nothing but
record the signal. The training loop calls :func:`raise_if_requested` at points where stopping is
safe (between steps, before the test evaluation and the exports), and that raises
``KeyboardInterrupt`` there: the loop saves the last finished step, writes every metric record it
has, and ``train.py`` exits with status 130.

Both handlers are installed explicitly, because a process started in the background inherits
SIGINT as *ignored*, and Python's default SIGTERM action kills without a word. A second signal
while stopping only says so: the save in progress finishes.

>>> import os, signal
>>> with deferred():
...     os.kill(os.getpid(), signal.SIGTERM)   # delivered, recorded, nothing raised here
...     requested()
'SIGTERM'
>>> requested() is None   # leaving the block restores the previous handlers and clears the flag
True
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Iterator

__all__ = ["install", "uninstall", "deferred", "record", "requested", "raise_if_requested"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_state = {"signal": None, "count": 0, "previous": None}


def _handler(signum, frame) -> None:
    _state["count"] += 1
    if _state["signal"] is None:
        _state["signal"] = signal.Signals(signum).name
        sys.stderr.write(f"\n{_state['signal']} received: stopping after the current step and saving it.\n")
    else:
        sys.stderr.write(f"\n{signal.Signals(signum).name} received again: still saving, then exiting.\n")
    sys.stderr.flush()


def record(signum: int) -> None:
    """Record a signal caught before :func:`install` (``train.py`` catches them while it imports).

    >>> record(signal.SIGTERM); requested()
    'SIGTERM'
    >>> uninstall()
    """
    _handler(signum, None)


def install() -> bool:
    """Install the flag-setting handlers for SIGINT and SIGTERM (main thread only); idempotent.

    Returns whether they are installed (False off the main thread, where Python cannot install them).

    >>> install(), requested()
    (True, None)
    >>> uninstall()
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    if _state["previous"] is None:
        _state["previous"] = {s: signal.getsignal(s) for s in _SIGNALS}
        for s in _SIGNALS:
            signal.signal(s, _handler)
    return True


def uninstall() -> None:
    """Restore the handlers :func:`install` replaced and clear the flag.

    >>> uninstall()   # nothing installed: nothing to do
    """
    previous = _state["previous"]
    if previous is not None and threading.current_thread() is threading.main_thread():
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
    _state.update(signal=None, count=0, previous=None)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Signals set the flag inside the block; the handlers that were there before come back after.

    A block inside one already deferred (``train.py`` installs first, then calls ``train``) keeps
    the outer installation and its flag.

    >>> with deferred():
    ...     requested() is None
    True
    """
    outer = _state["previous"] is not None
    install()
    try:
        yield
    finally:
        if not outer:
            uninstall()


def requested() -> str | None:
    """The name of the first signal received (``"SIGINT"``/``"SIGTERM"``), or None.

    >>> requested() is None
    True
    """
    return _state["signal"]


def raise_if_requested() -> None:
    """Raise ``KeyboardInterrupt`` when a signal was received: call it where stopping is safe.

    >>> raise_if_requested()   # no signal: returns
    """
    if _state["signal"] is not None:
        raise KeyboardInterrupt(_state["signal"])
