"""The loop's throughput books: compiling steps and validation are not training time; waiting is not host time."""

import time

import pytest

from jaxlora.training.throughput import Throughput


def _step(clock, shape, examples, work_s=0.0, wait_s=0.0, eval_s=0.0):
    clock.begin_step()
    time.sleep(work_s)
    if wait_s:
        time.sleep(wait_s)
        clock.waited(wait_s)
    if eval_s:
        time.sleep(eval_s)
        clock.evaluated(eval_s)
    clock.end_step(shape, examples)


def test_compiles_and_validation_are_left_out_and_waiting_is_not_host_time():
    clock = Throughput(start=time.perf_counter())
    _step(clock, (8, 16), 8, work_s=0.05)  # compiles: not counted
    _step(clock, (8, 32), 8, work_s=0.05)  # another shape compiles too
    assert clock.train_examples == 0 and clock.train_time == 0.0
    _step(clock, (8, 16), 8, work_s=0.02, wait_s=0.02, eval_s=0.2)
    _step(clock, (8, 32), 6, work_s=0.02, wait_s=0.02)
    assert clock.train_examples == 14
    assert 0.08 <= clock.train_time < 0.25  # two steps of 0.04 s; the 0.2 s validation is not in it
    assert clock.host_time == pytest.approx(clock.train_time - 0.04)  # the 0.04 s of waiting is not host time
    summary = clock.summary()
    assert summary["train_examples_per_s"] == pytest.approx(14 / clock.train_time)
    assert summary["host_share_of_step_time"] == pytest.approx(clock.host_time / clock.train_time)


def test_logging_window_averages_losses_and_restarts():
    start = time.perf_counter()
    clock = Throughput(start=start)
    clock.add_loss(1.0, 4)
    clock.add_loss(0.5, 4)
    loss, rate = clock.take_window(start + 2.0)
    assert loss == 0.75 and rate == pytest.approx(4.0, rel=1e-3)
    assert clock.window_losses == [] and clock.window_examples == 0 and clock.window_start == start + 2.0
    assert Throughput().summary() == {"train_examples_per_s": None, "host_share_of_step_time": None}
