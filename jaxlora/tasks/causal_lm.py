"""Causal-LM fine-tuning on prompt/completion pairs: the task kind behind ``config.task = "causal_lm"``.

Data are JSONL files, one example per line, in either form:

* ``{"prompt": "...", "completion": "..."}``: the prompt is tokenized as the tokenizer does by
  default (BOS where it adds one), the completion without special tokens, then EOS;
* ``{"messages": [{"role": ..., "content": ...}, ...]}``: every message but the last is rendered
  with the tokenizer's chat template (``add_generation_prompt=True``) as the prompt, and the last
  (the assistant's answer) is the completion, then EOS.

An example is stored as one token sequence whose ``type_ids`` mark the completion (1) against the
prompt (0), so the generic length-bucketed batches of :mod:`jaxlora.data` carry the completion mask
as ``token_type_ids``. An example longer than ``max_length`` is left out, never cut: the count is
reported (a warning naming the file) and the run goes on with the rest.

* **Loss**: cross-entropy of the next token, averaged over the completion tokens only
  (:func:`completion_loss`); prompt tokens and padding weigh nothing.
* **Evaluation** (:meth:`CausalLM.eval_outputs`, one forward pass per batch): per example the
  summed completion NLL, the number of completion tokens, and whether the argmax at every
  completion position is the completion token. That last flag is exactly "greedy generation
  reproduces the completion and then stops": greedy decoding emits token ``t+1`` = argmax given
  tokens ``..t``, so it follows the gold completion as long as, and only as long as, each of those
  argmaxes is the gold token. Metrics: ``loss``, ``perplexity`` and ``exact_match``.

Options (``config.causal_lm``): ``train_file``, ``validation_file``, ``test_file`` (JSONL paths),
``max_length``, ``min_bucket``, ``max_eval_examples``, ``max_test_examples`` (a CPU-sized check on the
first examples of the test split; the whole split by default); or, instead of files, ``glue_task = "sst2"``
(with ``glue_dir``): the CondLoRA protocol's SST-2 splits, each sentence rendered as an instruction
(:data:`INSTRUCTIONS`, through the chat template when the tokenizer has one) whose completion is the
label word, so ``exact_match`` is the accuracy of the generated answers.

>>> import json, pathlib, tempfile
>>> path = pathlib.Path(tempfile.mkdtemp()) / "train.jsonl"
>>> _ = path.write_text(json.dumps({"prompt": "2+2=", "completion": "4"}) + "\\n")
>>> read_examples(str(path))
[('2+2=', '4')]
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from typing import Any, Iterator, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxlora import data as jdata
from jaxlora.tasks import base

__all__ = ["CausalLM", "INSTRUCTIONS", "completion_loss", "glue_examples", "read_examples", "tokenize_examples",
           "KIND"]

# GLUE tasks as instructions: the prompt around each sentence and the answer word of each label.
INSTRUCTIONS = {
    "sst2": ("Is the sentiment of this movie review positive or negative? Answer with one word.\n\n{}",
             ("negative", "positive")),
}


def read_examples(path: str, tokenizer: Any = None) -> list[tuple[str, str]]:
    """``(prompt, completion)`` strings of a JSONL file (``messages`` lines rendered with the chat template).

    Raises ``ValueError`` naming the file and line of a line that is not a JSON object with
    ``prompt``/``completion`` strings or a ``messages`` list, and when ``messages`` lines meet a
    tokenizer without a chat template.

    >>> read_examples("no/such/file.jsonl")
    Traceback (most recent call last):
    ...
    FileNotFoundError: no/such/file.jsonl does not exist (a JSONL file of prompt/completion or messages lines).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist (a JSONL file of prompt/completion or messages lines).")
    examples = []
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where} is not valid JSON ({err}).") from err
            if isinstance(record, dict) and isinstance(record.get("prompt"), str) and isinstance(
                record.get("completion"), str
            ):
                examples.append((record["prompt"], record["completion"]))
            elif isinstance(record, dict) and isinstance(record.get("messages"), list) and record["messages"]:
                examples.append(_render_messages(record["messages"], tokenizer, where))
            else:
                raise ValueError(
                    f"{where} has neither string 'prompt' and 'completion' fields nor a non-empty 'messages' "
                    'list; write {"prompt": ..., "completion": ...} or {"messages": [{"role": ..., '
                    '"content": ...}, ...]}.'
                )
    return examples


def _render_messages(messages: list, tokenizer: Any, where: str) -> tuple[str, str]:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"{where} holds 'messages', but the tokenizer has no chat template to render them; use a "
            "tokenizer with one (e.g. an -Instruct model's) or write prompt/completion lines."
        )
    last = messages[-1]
    if not isinstance(last, dict) or not isinstance(last.get("content"), str):
        raise ValueError(f"{where}: the last message (the completion) needs a string 'content'.")
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    return prompt, last["content"]


def glue_examples(split, task: str, tokenizer: Any = None) -> list[tuple[str, str]]:
    """``(prompt, completion)`` pairs of a GLUE split rendered as instructions (:data:`INSTRUCTIONS`).

    >>> from jaxlora.data.readers import Split
    >>> prompt, answer = glue_examples(Split(["a fine film"], None, np.array([1]), np.arange(1)), "sst2")[0]
    >>> prompt.splitlines()[-1], answer   # without a chat template: a plain prompt, the word after a space
    ('Answer:', ' positive')
    """
    if task not in INSTRUCTIONS:
        raise ValueError(f"glue_task={task!r} has no instruction form; known: {sorted(INSTRUCTIONS)}.")
    template, words = INSTRUCTIONS[task]
    examples = []
    for text, label in zip(split.texts_a, np.asarray(split.labels)):
        prompt = template.format(text.strip())
        if tokenizer is not None and getattr(tokenizer, "chat_template", None):
            prompt = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
        else:
            prompt = f"{prompt}\nAnswer:"
        examples.append((prompt, (" " if not getattr(tokenizer, "chat_template", None) else "") + words[int(label)]))
    return examples


def tokenize_examples(
    examples: list[tuple[str, str]], tokenizer: Any, max_length: int, name: str = "data"
) -> jdata.TokenizedDataset:
    """Prompt + completion + EOS per example, ``type_ids`` 1 on the completion; too-long examples left out.

    >>> from tokenizers import Tokenizer, models, pre_tokenizers
    >>> from transformers import PreTrainedTokenizerFast
    >>> backend = Tokenizer(models.WordLevel({"<eos>": 0, "2+2=": 1, "4": 2}, unk_token="<eos>"))
    >>> backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    >>> tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>")
    >>> data = tokenize_examples([("2+2=", "4")], tokenizer, max_length=8)
    >>> data.token_ids.tolist(), data.type_ids.tolist()
    ([1, 2, 0], [0, 1, 1])
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("The tokenizer has no eos_token_id: a completion must end in EOS for generation to stop.")
    prompts = tokenizer([p for p, _ in examples])["input_ids"] if examples else []
    completions = tokenizer([c for _, c in examples], add_special_tokens=False)["input_ids"] if examples else []
    tokens, types, offsets, kept = [], [], [0], []
    for index, (prompt, completion) in enumerate(zip(prompts, completions)):
        sequence = list(prompt) + list(completion) + [eos]
        if len(sequence) > max_length:
            continue
        tokens.extend(sequence)
        types.extend([0] * len(prompt) + [1] * (len(completion) + 1))
        offsets.append(len(tokens))
        kept.append(index)
    dropped = len(examples) - len(kept)
    if dropped:
        warnings.warn(
            f"{name}: {dropped} of {len(examples)} examples are longer than max_length={max_length} tokens "
            "(prompt + completion + EOS) and were left out, not cut; raise max_length to keep them.",
            stacklevel=2,
        )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return jdata.TokenizedDataset(
        token_ids=np.asarray(tokens, np.int32), type_ids=np.asarray(types, np.int8),
        offsets=np.asarray(offsets, np.int64), labels=np.zeros(len(kept), np.int32),
        idx=np.asarray(kept, np.int64), pad_id=int(pad), max_length=int(max_length),
    )


def _next_token_terms(logits: jax.Array, batch: Mapping[str, jax.Array]):
    """Per-position NLL, completion weights and argmax hits for predicting token ``t+1`` from ``..t``."""
    logits = logits[:, :-1].astype(jnp.float32)
    targets = batch["input_ids"][:, 1:].astype(jnp.int32)
    weights = (batch["token_type_ids"][:, 1:] * batch["attention_mask"][:, 1:]).astype(jnp.float32)
    weights = weights * batch["example_mask"].astype(jnp.float32)[:, None]
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    hits = jnp.argmax(logits, axis=-1) == targets
    return nll, weights, hits


def completion_loss(logits: jax.Array, batch: Mapping[str, jax.Array]) -> jax.Array:
    """Mean next-token cross-entropy over the completion tokens of the real examples.

    >>> batch = {"input_ids": jnp.array([[5, 1, 2]]), "token_type_ids": jnp.array([[0, 1, 1]]),
    ...          "attention_mask": jnp.ones((1, 3)), "example_mask": jnp.ones(1)}
    >>> round(float(completion_loss(jnp.zeros((1, 3, 4)), batch)), 4)   # uniform over 4 tokens: log 4
    1.3863
    """
    nll, weights, _ = _next_token_terms(logits, batch)
    return jnp.sum(nll * weights) / jnp.maximum(jnp.sum(weights), 1.0)


@dataclasses.dataclass(frozen=True)
class CausalLM:
    """Prompt/completion fine-tuning of a decoder (see the module docstring).

    >>> task = CausalLM(train_file="train.jsonl")
    >>> task.metric_name, task.model_head()
    ('exact_match', {'task': 'causal_lm'})
    """

    train_file: str = ""
    validation_file: str = ""
    test_file: str = ""
    max_length: int = 256
    min_bucket: int = 16
    max_eval_examples: int = -1  # > 0: evaluate on the first this many validation examples
    max_test_examples: int = -1  # > 0: test on the first this many test examples
    glue_task: str = ""
    glue_dir: str = ""

    name = "causal_lm"
    display_name = "causal LM"
    metric_name = "exact_match"
    default_epochs = 1
    device_keys = ("input_ids", "attention_mask", "token_type_ids", "example_mask")

    @classmethod
    def from_config(cls, config) -> "CausalLM":
        options = config.causal_lm
        return cls(
            train_file=options.train_file, validation_file=options.validation_file or options.train_file,
            test_file=options.test_file or options.validation_file or options.train_file,
            max_length=int(options.max_length), min_bucket=min(int(options.min_bucket), int(options.max_length)),
            max_eval_examples=int(options.max_eval_examples), max_test_examples=int(options.max_test_examples),
            glue_task=options.glue_task,
            glue_dir=options.glue_dir or config.data_dir or "",
        )

    @property
    def buckets(self) -> tuple[int, ...]:
        return jdata.bucket_lengths(self.max_length, self.min_bucket)

    def model_head(self) -> dict:
        return {"task": "causal_lm"}

    def load(self, tokenizer: Any) -> base.TaskData:
        if self.glue_task:
            splits = jdata.protocol_splits(self.glue_task, data_dir=self.glue_dir or None,
                                           source="local" if self.glue_dir else "hub")
            named = [(f"{self.glue_task}-{name}", glue_examples(split, self.glue_task, tokenizer))
                     for name, split in zip(("train", "validation", "test"), splits)]
        elif not self.train_file:
            raise ValueError("config.causal_lm.train_file is empty: name a JSONL file of prompt/completion lines "
                             "(or set config.causal_lm.glue_task).")
        else:
            paths = (self.train_file, self.validation_file or self.train_file,
                     self.test_file or self.validation_file or self.train_file)
            named = [(path, read_examples(path, tokenizer)) for path in paths]
        train, validation, test = (tokenize_examples(examples, tokenizer, self.max_length, name=name)
                                   for name, examples in named)
        if 0 < self.max_eval_examples < validation.num_examples:
            validation = jdata.select(validation, np.arange(self.max_eval_examples))
        if 0 < self.max_test_examples < test.num_examples:
            test = jdata.select(test, np.arange(self.max_test_examples))
        return base.TaskData(train, validation, test)

    def steps_per_epoch(self, data: jdata.TokenizedDataset, batch_size: int) -> int:
        return jdata.steps_per_epoch(data.num_examples, batch_size)

    def train_batches(self, data, loader, batch_size: int, rows=None):
        return jdata.iterate(data, loader, batch_size, buckets=self.buckets, rows=rows)

    def eval_batches(self, data: jdata.TokenizedDataset, batch_size: int) -> Iterator[tuple[dict, np.ndarray]]:
        return jdata.iterate_eval_rows(data, batch_size, buckets=self.buckets)

    def loss(self, outputs: jax.Array, batch: Mapping[str, jax.Array]) -> jax.Array:
        return completion_loss(outputs, batch)

    def eval_outputs(self, outputs: jax.Array, batch: Mapping[str, jax.Array]) -> jax.Array:
        """``(batch, 3)``: summed completion NLL, completion tokens, greedy exact match (1.0 / 0.0)."""
        nll, weights, hits = _next_token_terms(outputs, batch)
        tokens = jnp.sum(weights, axis=-1)
        exact = jnp.all(hits | (weights == 0), axis=-1) & (tokens > 0)
        return jnp.stack([jnp.sum(nll * weights, axis=-1), tokens, exact.astype(jnp.float32)], axis=-1)

    def metrics(self, outputs: np.ndarray, data: jdata.TokenizedDataset) -> dict[str, float]:
        outputs = np.asarray(outputs, np.float64)
        loss = outputs[:, 0].sum() / max(outputs[:, 1].sum(), 1.0)
        return {"loss": float(loss), "perplexity": float(np.exp(loss)), "exact_match": float(outputs[:, 2].mean())}

    def write_predictions(self, path: str, data: jdata.TokenizedDataset, outputs: np.ndarray) -> None:
        """One ``{"idx", "loss", "exact_match"}`` line per example (``idx``: the line's example index)."""
        rows = [
            {"idx": int(i), "loss": float(o[0] / max(o[1], 1.0)), "exact_match": bool(o[2])}
            for i, o in zip(data.idx, np.asarray(outputs))
        ]
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as file:
            file.writelines(json.dumps(row) + "\n" for row in rows)
        os.replace(tmp, path)


def _options() -> ml_collections.ConfigDict:
    options = ml_collections.ConfigDict()
    options.train_file = ""
    options.validation_file = ""  # empty: the train file
    options.test_file = ""  # empty: the validation file
    options.max_length = 256
    options.min_bucket = 16
    options.max_eval_examples = -1
    options.max_test_examples = -1  # > 0: the first this many test examples only (say so when reporting)
    options.glue_task = ""  # "sst2": GLUE sentences as instructions instead of JSONL files
    options.glue_dir = ""  # empty: config.data_dir
    return options


KIND = base.register_kind(base.TaskKind(
    name="causal_lm",
    canonical=lambda task: "causal_lm" if task in ("causal_lm", "causal-lm") else None,
    names=lambda: ("causal_lm",),
    from_config=CausalLM.from_config,
    options=_options,
))
