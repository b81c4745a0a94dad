#!/usr/bin/env bash
# The default model's GPU run: full-parameter adaptation of SmolLM2-135M to masked diffusion (`diffucoder train
# adapt --mode full`), as one prepared run for a session lent a GPU (the device tool: 15 minutes in all, so one
# call of ~9 minutes):
#
#   run(command="bash scripts/gpu_pretrain.sh", timeout_s=600, carry=["runs/base"])
#
# The GPU machine reaches no network, so the base travels with the tree: put the pinned GGUF (or a converted
# base folder) under runs/base first. The GGUF is 94 MB and a call carries at most 64 MiB, so split it and send
# it over two calls (ignored files already on the warm machine are kept between calls):
#   split -b 60M <gguf> runs/base/part.  ;  carry runs/base/part.aa first (and `mkdir -p /tmp/b && cp ...`),
#   then part.ab; the script joins runs/base/part.* when it finds them. SmolLM2_GGUF overrides the path.
#
# 1. corpus: the GPU machine's standard library and site-packages (`diffucoder train corpus`), tokenized with
#    the base's tokenizer;
# 2. calibration: a few adaptation steps at the run's batch size, timed, to size the schedule to the time left;
# 3. adaptation, full parameters, with the learned lookahead (`--lookahead`: the model starts as the causal
#    base and each head learns how far it reads ahead; LOOKAHEAD=0 anneals from causal to full attention over
#    the first ~15 % of the steps instead), warmup ~3 %, cosine to 10 %, `--time-limit` as a guard;
# 4. packaging as the shipped adaptation (`diffucoder train package --rank $RANK`: low-rank bf16 delta, the
#    mask row whole; < 40 MB at rank 48) into $OUT, with the run's metrics and log.
# Back on the CPU machine: evaluate as the model card says and, if it beats the shipped one on the fixed eval,
# replace diffucoder_lsp/weights/smollm2-diffusion/adaptation.* and the card's table.
#
# A larger Qwen2-shaped base (e.g. Qwen2.5-Coder-0.5B as GGUF, `--base FILE.gguf`) needs the same steps with
# ~4x the memory and time per token: batch 32 x 1024 fits an H100 in bf16 with AdamW; its adaptation at rank 64
# is ~100 MB, beyond what the wheel ships, so it would be published as a separate download.
#
# Knobs (environment): TOTAL_S (wall-clock budget, default 540), BATCH (rows, 64), SEQ (512), LR (1e-4),
# RANK (48), SEED (0), LOOKAHEAD (1), CORPUS_ARGS (extra `train corpus` arguments).
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
OUT=${OUT:-/tmp/gpu_pretrain}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 DIFFUCODER_OFFLINE=1 TOKENIZERS_PARALLELISM=true
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # the package from the tree (the GPU image lacks only pygls)
PY=${PYTHON:-python3}
TOTAL_S=${TOTAL_S:-540}
BATCH=${BATCH:-64}
SEQ=${SEQ:-512}
LR=${LR:-1e-4}
RANK=${RANK:-48}
SEED=${SEED:-0}
LOOKAHEAD=${LOOKAHEAD:-1}
WORK=${WORK:-/tmp/gpu_pretrain_work}
rm -rf "$WORK" && mkdir -p "$WORK"
dc() { "$PY" -c 'import sys; from diffucoder_lsp.cli import main; sys.exit(main(sys.argv[1:]))' "$@"; }
since() { echo $(( $(date +%s) - START )); }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
"$PY" -c 'import torch, os; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "cpus", os.cpu_count())'

GGUF=${SmolLM2_GGUF:-}
if [ -z "$GGUF" ]; then
  if ls runs/base/part.* >/dev/null 2>&1; then cat runs/base/part.* > "$WORK/base.gguf" && GGUF="$WORK/base.gguf"
  else GGUF=$(ls runs/base/*.gguf runs/base/*.whl 2>/dev/null | head -1); fi
fi
[ -n "$GGUF" ] || { echo "no base under runs/base (see the header)"; exit 1; }
BASE_ARGS=(--base smollm2 --base-from "$GGUF")

# shellcheck disable=SC2086  # CORPUS_ARGS is a list of arguments
dc train corpus --out "$WORK/corpus" ${CORPUS_ARGS:-} || exit 1
echo "corpus built at $(since) s"

common=("${BASE_ARGS[@]}" --corpus "$WORK/corpus" --mode full --batch-size "$BATCH" --seq-len "$SEQ" --lr "$LR"
  --seed "$SEED" --infill-fraction 0.7 --eval-batches 4)
if [ "$LOOKAHEAD" = 1 ]; then common+=(--lookahead); fi
# calibration: converts the base and tokenizes the corpus (cached for the real run), times steps 10..20
dc train adapt "${common[@]}" --out "$WORK/calib" --steps 20 --warmup 5 --anneal-steps 5 --eval-every 0 || exit 1
STEP_S=$("$PY" - "$WORK/calib/metrics.jsonl" <<'EOF'
import json, sys
rows = {r["step"]: r["elapsed"] for r in map(json.loads, open(sys.argv[1])) if "elapsed" in r and "step" in r}
print(f"{(rows[20] - rows[10]) / 10:.5f}")
EOF
) || exit 1
LEFT=$(( TOTAL_S - $(since) - 60 ))  # final evaluation, save and packaging
STEPS=$("$PY" -c "print(max(50, int(0.95 * $LEFT / $STEP_S)))")
WARMUP=$(( STEPS / 30 > 10 ? STEPS / 30 : 10 ))
echo "calibrated at $(since) s: ${STEP_S} s per step; $LEFT s left -> $STEPS steps (warmup $WARMUP)"

dc train adapt "${common[@]}" --out "$WORK/run" --steps "$STEPS" --warmup "$WARMUP" \
  --anneal-steps $(( STEPS * 15 / 100 + 1 )) --eval-every $(( STEPS / 8 > 1 ? STEPS / 8 : 1 )) \
  --time-limit "$("$PY" -c "print(($LEFT + 20) / 60)")" \
  || echo "adaptation exited with an error: packaging its last checkpoint"
echo "trained at $(since) s"

dc train package "$WORK/run" "${BASE_ARGS[@]}" --out "$OUT/adaptation" --rank "$RANK" || exit 1
cp "$WORK/run/metrics.jsonl" "$OUT/"
"$PY" - "$WORK/run/metrics.jsonl" <<'EOF'
import json, sys
for r in map(json.loads, open(sys.argv[1])):
    if "val_loss" in r or r.get("event") == "end":
        print({k: r[k] for k in ("step", "tokens_seen", "val_loss", "val_ce", "val_acc", "reason") if k in r})
EOF
echo "done at $(since) s; in $OUT: $(ls -R "$OUT" | tr '\n' ' ')"
