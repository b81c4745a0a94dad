#!/usr/bin/env bash
# The bundled model's GPU pretraining as one prepared run, for a session lent a GPU (the device tool: 15 minutes
# in all, so this is one call of ~9 minutes; the model card's "a GPU run is still owed"):
#
#   run(command="bash scripts/gpu_pretrain.sh", timeout_s=600)
#
# 1. corpus: the GPU machine's standard library and site-packages (`diffucoder train corpus`, one worker per
#    core), with the bundled model's tokenizer (the same ids, so everything built around it still fits);
# 2. calibration: a few steps at the run's batch size, timed, to size the schedule to the time left;
# 3. pretraining of the bundled shape (`--config small`: the README's CPU latencies stay true) over that many
#    steps, warmup ~3 %, cosine to 10 %, `--time-limit` as a guard;
# 4. export (bf16 safetensors shards < 16 MiB) into $OUT, with the run's metrics, corpus stats and manifest
#    packed in run_meta.tar.gz, and log.txt (at most 8 files come back).
# Then, back on the CPU machine: evaluate against the bundled model (the model card's commands) and, if it is
# better, replace diffucoder_lsp/weights/default's safetensors, index and training_state.json, and the card.
#
# Knobs (environment): TOTAL_S (wall-clock budget of the whole script, default 540), CONFIG (small), BATCH (128
# rows), SEQ (512), LR (2e-3), SEED (0), CORPUS_ARGS (extra `train corpus` arguments).
# A dry run anywhere (~2 minutes on 2 cores):
#   PYTHON=.venv/bin/python TOTAL_S=150 CONFIG=tiny BATCH=8 SEQ=128 OUT=/tmp/gp \
#   CORPUS_ARGS="--no-stdlib --no-site-packages diffucoder_lsp" bash scripts/gpu_pretrain.sh
set -uo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
OUT=${OUT:-/tmp/gpu_pretrain}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=true
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # the package from the tree (the GPU image lacks only pygls)
PY=${PYTHON:-python3}
TOTAL_S=${TOTAL_S:-540}
CONFIG=${CONFIG:-small}
BATCH=${BATCH:-128}
SEQ=${SEQ:-512}
LR=${LR:-2e-3}
SEED=${SEED:-0}
WORK=${WORK:-/tmp/gpu_pretrain_work}
rm -rf "$WORK" && mkdir -p "$WORK"
dc() { "$PY" -c 'import sys; from diffucoder_lsp.cli import main; sys.exit(main(sys.argv[1:]))' "$@"; }
since() { echo $(( $(date +%s) - START )); }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
"$PY" -c 'import torch, os; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "cpus", os.cpu_count())'

# shellcheck disable=SC2086  # CORPUS_ARGS is a list of arguments
dc train corpus --out "$WORK/corpus" ${CORPUS_ARGS:-} || exit 1
cp diffucoder_lsp/weights/default/tokenizer.json "$WORK/corpus/"
echo "corpus built at $(since) s"

common=(--corpus "$WORK/corpus" --config "$CONFIG" --batch-size "$BATCH" --seq-len "$SEQ" --lr "$LR"
  --seed "$SEED" --infill-fraction 0.5)
# calibration: tokenizes the corpus (cached for the real run) and times steps 20..40
dc train pretrain "${common[@]}" --out "$WORK/calib" --steps 40 --warmup 10 --eval-every 0 || exit 1
STEP_S=$("$PY" - "$WORK/calib/metrics.jsonl" <<'EOF'
import json, sys
rows = {r["step"]: r["elapsed"] for r in map(json.loads, open(sys.argv[1])) if "elapsed" in r and "step" in r}
print(f"{(rows[40] - rows[20]) / 20:.5f}")
EOF
) || exit 1
LEFT=$(( TOTAL_S - $(since) - 45 ))  # start-up, final evaluation, save and export
STEPS=$("$PY" -c "print(max(50, int(0.95 * $LEFT / $STEP_S)))")  # evaluations and checkpoints take the rest
WARMUP=$(( STEPS / 30 > 50 ? STEPS / 30 : 50 ))
echo "calibrated at $(since) s: ${STEP_S} s per step; $LEFT s left -> $STEPS steps (warmup $WARMUP)"

dc train pretrain "${common[@]}" --out "$WORK/run" --steps "$STEPS" --warmup "$WARMUP" \
  --eval-every $(( STEPS / 8 > 1 ? STEPS / 8 : 1 )) --time-limit "$("$PY" -c "print(($LEFT + 20) / 60)")" \
  || echo "pretraining exited with an error: exporting its last checkpoint"
echo "trained at $(since) s"

dc train export "$WORK/run" --out "$WORK/export" || exit 1
cp "$WORK"/export/model*.safetensors* "$OUT/"  # the shards, and their index when there are several
cp "$WORK/run/metrics.jsonl" "$WORK/export/config.json" "$WORK/export/training_state.json" "$WORK/"
cp "$WORK/corpus/stats.json" "$WORK/corpus_stats.json" && cp "$WORK/corpus/manifest.txt" "$WORK/corpus_manifest.txt"
tar -czf "$OUT/run_meta.tar.gz" -C "$WORK" metrics.jsonl config.json training_state.json corpus_stats.json \
  corpus_manifest.txt
"$PY" - "$WORK/run/metrics.jsonl" <<'EOF'
import json, sys
for r in map(json.loads, open(sys.argv[1])):
    if "val_loss" in r or r.get("event") == "end":
        print({k: r[k] for k in ("step", "tokens_seen", "val_loss", "val_ce", "val_acc", "reason") if k in r})
EOF
echo "done at $(since) s; in $OUT: $(ls "$OUT" | tr '\n' ' ')"
