"""The GLUE task kind: its loss is the hand-computed one, its batches cover every example, it reads its options."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxlora import data as jdata
from jaxlora import tasks, training
from jaxlora.tasks.glue import Glue, loss_fn


def test_loss_is_masked_cross_entropy_or_squared_error():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [5.0, -5.0]], np.float32)
    labels, mask = np.array([0, 1, 1]), np.array([1.0, 1.0, 0.0])  # the third row is a dummy
    expected = np.mean([-np.log(np.exp(2) / (np.exp(2) + 1)), -np.log(np.e / (np.e + 1))])
    assert float(loss_fn(jnp.asarray(logits), labels, mask, regression=False)) == pytest.approx(expected, rel=1e-6)
    scores, targets = np.array([[1.0], [2.5], [9.0]]), np.array([2.0, 2.0, 0.0])
    assert float(loss_fn(jnp.asarray(scores), targets, mask, regression=True)) == pytest.approx((1.0 + 0.25) / 2)
    task = Glue(jdata.get_task("stsb"))
    batch = {"labels": targets, "example_mask": mask}
    assert float(task.loss(jnp.asarray(scores), batch)) == pytest.approx(0.625)


def test_eval_batches_cover_every_example_once_and_say_where_each_row_goes():
    lengths = np.array([5, 1, 9, 3, 7, 2, 4])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    data = jdata.TokenizedDataset(np.arange(1, offsets[-1] + 1, dtype=np.int32), np.zeros(offsets[-1], np.int8),
                                  offsets, np.arange(7, dtype=np.int32) % 2, np.arange(100, 107), 0, 16)
    task = Glue(jdata.get_task("sst2"), max_length=16, min_bucket=4)
    seen = []
    for batch, rows in task.eval_batches(data, batch_size=3):
        real = int(batch["example_mask"].sum())
        assert real == len(rows) and batch["input_ids"].shape[0] == 3
        np.testing.assert_array_equal(batch["idx"][:real], data.idx[rows])  # row i of the batch is example rows[i]
        seen.extend(rows.tolist())
    assert sorted(seen) == list(range(7))
    assert set(task.device_keys) == set(jdata.BATCH_KEYS) - {"idx"}


def test_from_config_reads_the_data_fields_once():
    config = training.default_config()
    config.task, config.data_dir, config.max_length, config.min_bucket = "STS-B", "/glue", 100, 32
    config.max_eval_examples, config.validation_fraction = 50, 0.2
    task = tasks.from_config(config)
    assert isinstance(task, Glue) and task.name == "stsb" and task.data_dir == "/glue"
    assert task.buckets == (32, 64, 100) and task.max_eval_examples == 50 and task.validation_fraction == 0.2
    assert task.model_head() == {"task": "regression", "num_labels": 1} and task.default_epochs == 100
    assert training.config.learning_rate(config, task) == 1e-4 and training.config.num_epochs(config, task) == 100
