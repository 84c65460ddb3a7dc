"""The causal-LM task kind: JSONL reading, completion-only loss, exact match = greedy generation, clear errors."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlora.models as jm
from jaxlora import data as jdata
from jaxlora.tasks import causal_lm
from jaxlora.tasks.base import find_kind
from tests.tasks.causal_lm_files import WORDS, causal_config, word_tokenizer, write_jsonl


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer()


def test_kind_is_registered_with_its_options():
    from jaxlora.training import default_config

    assert find_kind("causal_lm") is causal_lm.KIND
    config = default_config()
    assert config.causal_lm.max_length == 256 and config.causal_lm.train_file == ""


def test_prompt_completion_and_messages_lines_tokenize_with_a_completion_mask(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"prompt": "Q: a b", "completion": "yes"},
        {"messages": [{"role": "user", "content": "c d"}, {"role": "assistant", "content": "no"}]},
    ])
    examples = causal_lm.read_examples(path, tokenizer)
    assert examples == [("Q: a b", "yes"), ("Q: c d A: ", "no")]
    data = causal_lm.tokenize_examples(examples, tokenizer, max_length=16)
    first = data.token_ids[data.offsets[0]:data.offsets[1]].tolist()
    assert [WORDS[i] for i in first] == ["<bos>", "Q:", "a", "b", "yes", "<eos>"]
    assert data.type_ids[data.offsets[0]:data.offsets[1]].tolist() == [0, 0, 0, 0, 1, 1]


def test_completion_loss_equals_hand_computed_masked_cross_entropy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 11)).astype(np.float32)
    ids = rng.integers(0, 11, size=(3, 5))
    types = np.array([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0], [0, 0, 0, 1, 1]])
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    example_mask = np.array([1.0, 1.0, 0.0])  # the last row is a dummy
    batch = {"input_ids": ids, "token_type_ids": types, "attention_mask": mask, "example_mask": example_mask}
    total, count = 0.0, 0
    for b in range(3):
        for t in range(4):  # position t predicts token t+1
            if types[b, t + 1] and mask[b, t + 1] and example_mask[b]:
                row = logits[b, t].astype(np.float64)
                total += np.log(np.exp(row - row.max()).sum()) + row.max() - row[ids[b, t + 1]]
                count += 1
    got = float(causal_lm.completion_loss(jnp.asarray(logits), {k: jnp.asarray(v) for k, v in batch.items()}))
    assert count == 5
    np.testing.assert_allclose(got, total / count, rtol=1e-6)


def test_exact_match_is_greedy_generation_reproducing_the_completion():
    module, params = jm.from_config(jm.tiny_config("llama", initializer_range=0.1))
    prompts = [[1, 5, 7, 9], [1, 11, 12, 13, 14, 15]]
    greedy = [np.asarray(jm.generate(module, params, np.array([p]), max_new_tokens=4))[0].tolist() for p in prompts]
    completions = [greedy[0], greedy[1][:3] + [(greedy[1][3] + 1) % 99]]  # the second differs in its last token
    tokens = [p + c for p, c in zip(prompts, completions)]
    data = jdata.TokenizedDataset(
        token_ids=np.concatenate(tokens).astype(np.int32),
        type_ids=np.concatenate([[0] * len(p) + [1] * len(c) for p, c in zip(prompts, completions)]).astype(np.int8),
        offsets=np.cumsum([0] + [len(t) for t in tokens]), labels=np.zeros(2, np.int32), idx=np.arange(2),
        pad_id=0, max_length=16,
    )
    task = causal_lm.CausalLM(train_file="unused", max_length=16)
    outputs = np.zeros((2, 3))
    for batch, rows in task.eval_batches(data, batch_size=4):
        logits = module.apply({"params": params}, batch["input_ids"], batch["attention_mask"])
        outputs[rows] = np.asarray(task.eval_outputs(logits, {k: jnp.asarray(v) for k, v in batch.items()}))[: len(rows)]
    assert outputs[:, 2].tolist() == [1.0, 0.0]
    assert outputs[:, 1].tolist() == [4.0, 4.0]
    metrics = task.metrics(outputs, data)
    assert metrics["exact_match"] == 0.5
    np.testing.assert_allclose(metrics["perplexity"], np.exp(outputs[:, 0].sum() / 8), rtol=1e-6)


def test_a_bad_line_names_the_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "completion": "b"}, {"text": "c"}])
    with pytest.raises(ValueError, match=r"bad.jsonl, line 2 has neither string 'prompt' and 'completion'"):
        causal_lm.read_examples(path)
    path = write_jsonl(tmp_path / "broken.jsonl", ["{not json"])
    with pytest.raises(ValueError, match=r"broken.jsonl, line 1 is not valid JSON"):
        causal_lm.read_examples(path)


def test_messages_with_a_tokenizer_without_template_say_so(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "a"},
                                                               {"role": "assistant", "content": "b"}]}])
    plain = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer, eos_token="<eos>")
    with pytest.raises(ValueError, match=r"chat.jsonl, line 1 holds 'messages', but the tokenizer has no chat template"):
        causal_lm.read_examples(path, plain)


def test_too_long_examples_are_counted_and_left_out_never_cut(tokenizer):
    examples = [("Q: a", "yes"), ("Q: a b c d a b c d", "no"), ("Q: b", "a b c d a b c d")]
    with pytest.warns(UserWarning, match=r"2 of 3 examples are longer than max_length=8 tokens"):
        data = causal_lm.tokenize_examples(examples, tokenizer, max_length=8, name="train.jsonl")
    assert data.num_examples == 1 and data.idx.tolist() == [0]


def test_train_py_loop_runs_a_causal_lm_task(tokenizer, tmp_path):
    """The same loop as GLUE: two LoRA steps on a tiny Llama, evaluation by loss, perplexity, exact match."""
    from jaxlora.training import train

    results = train(causal_config(tokenizer, tmp_path), str(tmp_path / "run"))
    assert results["task"] == "causal_lm"
    text = json.dumps(results)
    assert "exact_match" in text and "perplexity" in text


def test_a_causal_lm_run_resumes_exactly(tokenizer, tmp_path):
    import orbax.checkpoint as ocp

    from jaxlora.training import train

    overrides = {"max_steps": 4, "eval_every": 2, "lora.dropout": 0.1, "eval_at_start": True}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    first = train(causal_config(tokenizer, tmp_path, **overrides), str(straight))

    def ctrl_c_at_step_3(step):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(causal_config(tokenizer, tmp_path, **overrides), str(resumed), hooks=[ctrl_c_at_step_3])
    assert not (resumed / "checkpoints" / "4").exists()
    again = train(causal_config(tokenizer, tmp_path, **overrides), str(resumed))
    assert again["steps"] == 4
    # The step-0 validation (before any update) is in metrics.jsonl and results.json, kept across the resume.
    assert set(first["initial_validation_metrics"]) == {"loss", "perplexity", "exact_match"}
    assert again["initial_validation_metrics"] == pytest.approx(first["initial_validation_metrics"], rel=1e-6)
    assert first["best_step"] > 0  # step 0 is a measurement, never the selected checkpoint

    def state(workdir):
        return jax.tree.map(np.asarray, ocp.StandardCheckpointer().restore(workdir / "checkpoints" / "4" / "state"))

    def losses(workdir):
        records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in records if r["split"] == "train"}

    a, b = state(straight), state(resumed)
    for name in ("trainable", "opt_state", "step", "rng"):
        for x, y in zip(jax.tree.leaves(a[name]), jax.tree.leaves(b[name])):
            np.testing.assert_allclose(x, y, rtol=0, atol=1e-6, err_msg=name)
    assert losses(straight) == pytest.approx(losses(resumed), rel=1e-6)
    assert sorted(losses(resumed)) == [1, 2, 3, 4]
    validated = [json.loads(line)["step"] for line in (resumed / "metrics.jsonl").read_text().splitlines()
                 if json.loads(line)["split"] == "validation"]
    assert validated == [0, 2, 4]


def test_sst2_sentences_become_instructions_answered_by_the_label_word(tokenizer, tmp_path):
    folder = tmp_path / "glue" / "SST-2"
    folder.mkdir(parents=True)
    rows = [("a b c", 1), ("d d", 0), ("a a", 1), ("b c", 0)] * 5
    for name in ("train", "dev"):
        (folder / f"{name}.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows))
    task = causal_lm.CausalLM(glue_task="sst2", glue_dir=str(tmp_path / "glue"), max_length=64)
    data = task.load(tokenizer)
    assert (data.train.num_examples, data.validation.num_examples, data.test.num_examples) == (18, 2, 20)
    answers = [
        [WORDS[t] for t, kind in zip(data.test.token_ids[a:b], data.test.type_ids[a:b]) if kind]
        for a, b in zip(data.test.offsets[:-1], data.test.offsets[1:])
    ]
    assert answers[:2] == [["positive", "<eos>"], ["negative", "<eos>"]]
    prompt, completion = causal_lm.glue_examples(jdata.readers.Split(["a b"], None, np.array([0]), np.arange(1)),
                                                 "sst2", tokenizer)[0]
    assert prompt.startswith("Q: Is the sentiment") and prompt.endswith("A: ") and completion == "negative"


def test_smollm2_sst2_config_builds_the_instruction_task():
    import importlib

    from jaxlora.tasks import from_config
    from jaxlora.training.config import validate

    config = importlib.import_module("configs.lora_smollm2_sst2").get_config("offline")
    validate(config)
    task = from_config(config)
    assert isinstance(task, causal_lm.CausalLM) and task.glue_task == "sst2" and task.glue_dir == config.data_dir
    assert config.model == "smollm2-135m" and tuple(config.lora.targets) == ("q_proj", "v_proj")


def test_smollm2_sst2_offline_config_in_short_zero_shot_then_tuned(tokenizer, tmp_path, monkeypatch):
    """The real run's config (configs/lora_smollm2_sst2.py:offline), on the tiny Llama and a tiny SST-2, two steps."""
    import importlib

    from jaxlora.training import train
    from jaxlora.training.reporting import read_metrics

    glue = tmp_path / "glue" / "SST-2"
    glue.mkdir(parents=True)
    rows = [("a b c", 1), ("d d", 0), ("a a", 1), ("b c", 0)] * 5
    for name in ("train", "dev"):
        (glue / f"{name}.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows))
    monkeypatch.setenv("GLUE_DIR", str(tmp_path / "glue"))
    config = importlib.import_module("configs.lora_smollm2_sst2").get_config("offline")
    assert config.eval_at_start and config.causal_lm.glue_dir == str(tmp_path / "glue")
    config.model = str(causal_config(tokenizer, tmp_path).model)  # the tiny Llama instead of SmolLM2
    config.update_from_flattened_dict({"max_steps": 2, "eval_every": 2, "causal_lm.max_length": 64,
                                       "causal_lm.min_bucket": 64, "progress_bar": False, "plot": False})
    results = train(config, str(tmp_path / "run"))
    assert set(results["initial_validation_metrics"]) == {"loss", "perplexity", "exact_match"}
    assert results["best_step"] == 2 and 0.0 <= results["test_metrics"]["exact_match"] <= 1.0
    validations = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["split"] == "validation"]
    assert [r["step"] for r in validations] == [0, 2]
    assert validations[0]["exact_match"] == results["initial_validation_metrics"]["exact_match"]
