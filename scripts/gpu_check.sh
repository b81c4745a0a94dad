#!/usr/bin/env bash
# The GPU half of the fast-inference issue as one prepared run, for a session that is lent a GPU (the device
# tool: 15 minutes in all, so everything goes in one call). On an H100/H200 it should take 5-8 minutes:
#
#   run(command="bash scripts/gpu_check.sh", carry=[".whl"], timeout_s=590)
#
# 1. a random checkpoint of the exact DiffuCoder-7B shape (make-tiny --preset dream-7b), made on the GPU,
#    15 GB of bf16 in /tmp;
# 2. `diffucoder bench` in bf16 at ~1k context: one 64-token hole (every configuration, the reference included)
#    and 3 x 64 (all but the reference), the table the README's GPU section wants;
# 3. scripts/step_profile.py on one `all` fill: per step, the GPU's busy time against wall time and the host
#    reads (syncs) in the loop, which say whether sync-free steps or CUDA graphs would pay;
# 4. if bitsandbytes is importable (carry its wheel in .whl, see the device README): the same model in NF4,
#    `all` only, for its speed and peak memory (the target is <= 6 GB).
# Results land in $OUT (the device tool brings them back): bench_bf16.json, bench_bf16_3holes.json,
# step_profile.json, bench_nf4.json, log.txt.
#
# A dry run anywhere: PYTHON=.venv/bin/python DEVICE=cpu CONTEXTS=128 SPANS=8 CASES=1 REPEAT=1 OUT=/tmp/x
# CKPT=<a make-tiny folder> bash scripts/gpu_check.sh (49 s on 2 cores; CKPT skips making the 7B checkpoint, and
# LAYERS=1 makes a 1-layer one of the 7B width instead, too slow on a CPU for more than the first table).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
PY=${PYTHON:-python3}  # on the GPU machine the plain python3 holds PyTorch
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # the package from the tree: the GPU image has its needs but pygls
DEVICE=${DEVICE:-cuda}
CONTEXTS=${CONTEXTS:-1024}
SPANS=${SPANS:-64}
CKPT=${CKPT:-/tmp/dream7b-random}
dc() { "$PY" -c 'import sys; from diffucoder_lsp.cli import main; sys.exit(main(sys.argv[1:]))' "$@"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
if [ ! -f "$CKPT/config.json" ]; then
  start=$(date +%s)
  dc make-tiny "$CKPT" --preset dream-7b ${LAYERS:+--layers "$LAYERS"} --shards 4 --device "$DEVICE" || exit 1
  echo "checkpoint written in $(( $(date +%s) - start )) s"
fi
common=(--model "$CKPT" --device "$DEVICE" --contexts "$CONTEXTS" --spans "$SPANS" --cases "${CASES:-2}"
  --repeat "${REPEAT:-3}" --tokens-per-step 1 --json)
dc bench "${common[@]}" --holes 1 --dtype bf16 > "$OUT/bench_bf16.json" || echo "bf16 bench (1 hole) failed"
dc bench "${common[@]}" --holes 3 --dtype bf16 --configs cache,block,parallel,all,bounded,ar \
  > "$OUT/bench_bf16_3holes.json" || echo "bf16 bench (3 holes) failed"
# blocks of one position (fill's and the server's decoding), with speculative steps and without
dc bench "${common[@]}" --holes 1 --dtype bf16 --configs block,ar --block-size 1 > "$OUT/bench_bf16_block1.json" \
  || echo "bf16 bench (blocks of 1) failed"
dc bench "${common[@]}" --holes 1 --dtype bf16 --configs block --block-size 1 --draft-tokens 0 \
  > "$OUT/bench_bf16_block1_nodraft.json" || echo "bf16 bench (blocks of 1, no guesses) failed"
# one `all` fill step by step: device busy time against wall time, host reads per step (syncs, CUDA graphs?)
"$PY" scripts/step_profile.py --model "$CKPT" --device "$DEVICE" --dtype bf16 --context "${CONTEXTS%%,*}" \
  --span "${SPANS%%,*}" --json "$OUT/step_profile.json" || echo "step profile failed"
if "$PY" -c 'import bitsandbytes' 2>/dev/null; then
  dc bench "${common[@]}" --holes 1 --quant 4bit --configs all,ar > "$OUT/bench_nf4.json" || echo "nf4 bench failed"
else
  echo "no bitsandbytes: NF4 skipped (carry its wheel in .whl)"
fi
"$PY" - "$OUT" <<'EOF'
import json, pathlib, sys
for f in sorted(pathlib.Path(sys.argv[1]).glob("bench_*.json")):
    try:
        data = json.loads(f.read_text())
    except ValueError:
        print(f.name, "is not JSON"); continue
    print(f"== {f.name}: {data['meta'].get('device_name')} {data['meta'].get('dtype')} quant {data['meta'].get('quant')}")
    for r in data["rows"]:
        print(f"{r['workload']:24s} {r['config']:10s} p50 {r['p50_ms']:9.1f} ms  passes {r['forward_passes']:6.1f}"
              f"  peak {r['peak_mem_mb']:8.0f} MB")
EOF
