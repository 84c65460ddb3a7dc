"""A task kind is one file: a kind registered from outside jaxlora, with its own option and batch schema, trains."""

import json
from typing import Iterator

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxlora import data as jdata
from jaxlora import tasks, training
from tests.training.conftest import load_config, tiny, tiny_glue, tiny_model  # noqa: F401  (fixtures)

WORDS = ["good", "bad", "film", "plot"]


class Parity:
    """Is the number of "good" tokens odd? Synthetic sentences; batches carry no token_type_ids."""

    name = display_name = "parity"
    metric_name = "accuracy"
    default_epochs = 1
    device_keys = ("input_ids", "attention_mask", "labels", "example_mask")

    def __init__(self, num_examples: int):
        self.num_examples = num_examples

    def model_head(self):
        return {"task": "sequence_classification", "num_labels": 2}

    def load(self, tokenizer):
        rng = np.random.default_rng(0)
        def split(n):
            texts = [" ".join(rng.choice(WORDS, size=rng.integers(2, 8))) for _ in range(n)]
            labels = np.array([t.split().count("good") % 2 for t in texts], np.int32)
            return jdata.tokenize(jdata.Split(texts, None, labels, np.arange(n)), tokenizer, 16, use_cache=False)
        return tasks.TaskData(split(self.num_examples), split(8), split(8))

    def steps_per_epoch(self, data, batch_size):
        return jdata.steps_per_epoch(data.num_examples, batch_size)

    def _strip(self, batch):
        return {k: v for k, v in batch.items() if k != "token_type_ids"}

    def train_batches(self, data, loader, batch_size) -> Iterator:
        for batch, after in jdata.iterate(data, loader, batch_size, buckets=(16,)):
            yield self._strip(batch), after

    def eval_batches(self, data, batch_size):
        for start, batch in zip(range(0, data.num_examples, batch_size), jdata.iterate_eval(data, batch_size, buckets=(16,))):
            yield self._strip(batch), np.arange(start, min(start + batch_size, data.num_examples))

    def loss(self, outputs, batch):
        assert "token_type_ids" not in batch  # the schema is the task's own
        per = optax.softmax_cross_entropy_with_integer_labels(outputs.astype(jnp.float32), batch["labels"])
        return jnp.sum(per * batch["example_mask"]) / jnp.sum(batch["example_mask"])

    def eval_outputs(self, outputs, batch):
        return jnp.argmax(outputs, axis=-1)

    def metrics(self, outputs, data):
        return {"accuracy": float(np.mean(outputs == data.labels))}

    def write_predictions(self, path, data, outputs):
        with open(path, "w") as f:
            f.writelines(json.dumps({"prediction": int(p)}) + "\n" for p in outputs)


def _options():
    options = ml_collections.ConfigDict()
    options.num_examples = 16
    return options


@pytest.fixture
def parity_kind():
    kind = tasks.register_kind(tasks.TaskKind(
        name="parity", canonical=lambda name: "parity" if name == "parity" else None, names=lambda: ("parity",),
        from_config=lambda config: Parity(int(config.parity.num_examples)), options=_options,
    ))
    yield kind
    tasks.base._KINDS.pop("parity")


def test_registry_finds_the_glue_kind_by_any_spelling():
    assert tasks.find_kind("MNLI-mm").name == "glue" and tasks.find_kind("squad") is None
    assert {"sst2", "stsb", "mnli_mm"} <= set(tasks.task_names())
    with pytest.raises(ValueError, match=r"config.task='squad' is not a GLUE task or another registered task kind"):
        config = training.default_config()
        config.task = "squad"
        tasks.from_config(config)


def test_a_kind_from_outside_trains_with_its_option_and_schema(parity_kind, tiny_model, tiny_glue, tmp_path):
    config = tiny(load_config("lora"), tiny_model, tiny_glue, tmp_path)
    config.unlock()
    config.parity = _options()  # configs built before the kind registered lack its block
    config.lock()
    config.task = "parity"
    config.parity.num_examples = 24  # the kind's own option, set like any override
    assert "parity" in training.default_config()  # a fresh schema has the block
    workdir = tmp_path / "run"
    results = training.train(config, workdir)
    assert results["task"] == "parity" and results["steps"] == 2 and results["metric_name"] == "accuracy"
    run = training.build(config)
    assert run.train_data.num_examples == 24 and run.steps_per_epoch == 3
    predictions = (workdir / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 8 and set(json.loads(predictions[0])) == {"prediction"}
