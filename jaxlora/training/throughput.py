"""Throughput bookkeeping of the loop: examples per second of training, and the host's share of it.

The loop never waits for the step it just launched (it reads step ``n``'s loss after dispatching
step ``n + 1``), so its time splits into *waiting* for the device and *host work* (batch
assembly, transfer, dispatch, logging, checkpoint calls). :class:`Throughput` keeps both, and:

* leaves out validation (the logged examples/s is training only) and every step that compiled
  a new batch shape (the first step of each padded length);
* keeps a logging window: the mean loss and examples/s since the last logged step.

>>> import time
>>> clock = Throughput(start=time.perf_counter())
>>> for shape in [(8, 16), (8, 16)]:   # the first step of a shape compiles: not counted
...     clock.begin_step()
...     clock.end_step(shape, examples=8)
>>> clock.train_examples, sorted(clock.compiled_shapes)
(8, [(8, 16)])
>>> clock.add_loss(0.5, 8); clock.add_loss(0.7, 8)
>>> round(clock.take_window(time.perf_counter())[0], 2)
0.6
>>> sorted(clock.summary())
['host_share_of_step_time', 'train_examples_per_s']
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

__all__ = ["Throughput"]


@dataclasses.dataclass
class Throughput:
    """Host-side timings of the training loop (see the module docstring); ``start`` opens the first window."""

    start: dataclasses.InitVar[float] = 0.0
    train_examples: int = 0
    train_time: float = 0.0  # seconds in the training loop (no evaluation, no compiling steps)
    host_time: float = 0.0  # part of it the host was busy
    wait_time: float = 0.0  # time the host waited for the device (the step itself)
    eval_time: float = 0.0
    compiled_shapes: set = dataclasses.field(default_factory=set)
    window_losses: list = dataclasses.field(default_factory=list)
    window_examples: int = 0
    window_start: float = 0.0
    _step_start: tuple = (0.0, 0.0, 0.0)

    def __post_init__(self, start: float) -> None:
        self.window_start = start

    def begin_step(self) -> None:
        self._step_start = (time.perf_counter(), self.eval_time, self.wait_time)

    def waited(self, seconds: float) -> None:
        """The host blocked ``seconds`` on a device result."""
        self.wait_time += seconds

    def evaluated(self, seconds: float) -> None:
        """A validation took ``seconds``: not training time, not in the window's rate."""
        self.eval_time += seconds
        self.window_start += seconds

    def end_step(self, shape: tuple, examples: int) -> None:
        """Close the step begun last; a step of a shape not seen before compiled and is not counted."""
        began, eval_before, wait_before = self._step_start
        end = time.perf_counter() - (self.eval_time - eval_before)  # validation is not training
        if shape not in self.compiled_shapes:
            self.compiled_shapes.add(shape)
            if len(self.compiled_shapes) == 1:
                self.window_start = end  # the first window starts after the first compile
            return
        self.train_examples += examples
        self.train_time += end - began
        self.host_time += (end - began) - (self.wait_time - wait_before)

    def add_loss(self, loss: float, examples: int) -> None:
        self.window_losses.append(loss)
        self.window_examples += examples

    def take_window(self, now: float) -> tuple[float, float]:
        """``(mean loss, examples/s)`` of the window, which then starts again at ``now``."""
        loss = float(np.mean(self.window_losses))
        rate = self.window_examples / max(now - self.window_start, 1e-9)
        self.window_losses, self.window_examples, self.window_start = [], 0, now
        return loss, rate

    def summary(self) -> dict:
        """``train_examples_per_s`` and ``host_share_of_step_time`` for results.json (None before any)."""
        if not self.train_examples:
            return {"train_examples_per_s": None, "host_share_of_step_time": None}
        train_time = max(self.train_time, 1e-9)
        return {"train_examples_per_s": self.train_examples / train_time,
                "host_share_of_step_time": self.host_time / train_time}
