#!/usr/bin/env bash
# The whole GPU measurement in one command, on one GPU (expected to take about seven minutes on an
# H100; every part has its own time limit, and all of them together stay under 560 s).
#
#   bash benchmarks/gpu_session.sh                  # on the GPU machine, from the repository root
#   GPU_SESSION_SMOKE=1 PYTHON=.venv/bin/python OUT=/tmp/out bash benchmarks/gpu_session.sh
#                                                   # the same command lines on a CPU, tiny models
#
# Parts, in bf16 (random init; docs/benchmarks.md explains every row):
#   1. gpu.py on RN50x4 (288 px): stage 1 `--encoder both` with `--channels-last auto` (channels-last
#      there), `off`, and `off` with `--pixel-cache off`; `--compile` with `--channels-last auto`; and
#      `--deterministic` (no cuDNN benchmark mode, no TF32, cuDNN's deterministic algorithms).
#   2. gpu.py on RN50x4: the bare image tower, forward and forward+backward, in both layouts, the
#      forward+backward also without cuDNN benchmark mode and TF32; gallery
#      extraction from the pixel cache against the bare forward, and decoding; the loader.
#      Decoding rows read 2,048 files.
#   3. gpu.py on ViT-B-16 (224 px): the bare tower and extraction.
#   4. profile_step.py on RN50x4, batch 128: the stage-1 step's device time by kind of operation.
#   5. accum_memory.py on RN50x4, global batch 128, K = 1, 4, 16.
# A part stopped by its time limit still prints the rows it measured (gpu.py catches SIGTERM).
# Writes $OUT/gpu_table.md (parts 1 to 3), $OUT/profile_step.md (4) and $OUT/accum_memory.md (5);
# prints everything.
#
# The machine has torch and accelerate but not open_clip_torch, ftfy or wcwidth: their wheels
# travel in .whl/ (git-ignored) and are installed into /tmp/site first.
set -uo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PWD" || { echo "gpu_session: could not install the wheels in .whl/" >&2; exit 1; }
elif [ -n "${GPU_SESSION_SMOKE:-}" ]; then
  export PYTHONPATH="$PWD"  # a CPU check in an environment that has the packages
else
  echo "gpu_session: no wheels in .whl/ (open_clip_torch, ftfy, wcwidth; see docs/benchmarks.md)" >&2
  exit 1
fi
PY=${PYTHON:-python3}
"$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')"

OUT=${OUT:-$PWD/gpu_session_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
BUDGET=${GPU_SESSION_SECONDS:-560}  # all parts together; each also has its own cap below
START=$SECONDS
FAILED=()

if [ -n "${GPU_SESSION_SMOKE:-}" ]; then  # tiny models and sizes: a check of the command lines
  RN=cir-tiny-rn VIT=cir-tiny-vit SIZES=(--smoke) ACCUM=(--batch-size 4 --accum 1 2)
  PROFILE=(--batch-size 4 --warmup 1 --steps 1)
else
  RN=RN50x4 VIT=ViT-B-16
  SIZES=(--train 1536 --epochs 3 --images 2048 --decode-images 2048 --unique-photos 128 --repeats 3)
  ACCUM=(--batch-size 128 --accum 1 4 16)
  PROFILE=(--batch-size 128)
fi

# part NAME CAP_SECONDS TABLE_FILE COMMAND...: runs COMMAND under the smaller of CAP and the time
# left, its stdout (the report) also appended to TABLE_FILE; a failure is noted and the next part runs.
part() {
  local name=$1 cap=$2 table=$3
  shift 3
  local left=$((BUDGET - (SECONDS - START)))
  local limit=$((cap < left ? cap : left))
  if [ "$limit" -lt 20 ]; then
    echo "== $name: skipped, ${left}s of the budget left" >&2
    FAILED+=("$name (no time left)")
    return
  fi
  echo "== $name (limit ${limit}s): $*" >&2
  local began=$SECONDS
  timeout -k 10 "$limit" "$@" | tee -a "$table"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - began))s" >&2
  [ "$rc" -eq 0 ] || FAILED+=("$name (exit $rc)")
  echo >>"$table"
}

: >"$OUT/gpu_table.md"
: >"$OUT/accum_memory.md"
: >"$OUT/profile_step.md"
part "gpu.py $RN, stage 1" 270 "$OUT/gpu_table.md" "$PY" benchmarks/gpu.py --models "$RN" --precisions bf16 \
  --rows stage1-both both_compiled both_deterministic "${SIZES[@]}"
part "gpu.py $RN, tower and extraction" 110 "$OUT/gpu_table.md" "$PY" benchmarks/gpu.py --models "$RN" \
  --precisions bf16 --rows tower tower-deterministic extraction loader "${SIZES[@]}"
part "gpu.py $VIT" 90 "$OUT/gpu_table.md" "$PY" benchmarks/gpu.py --models "$VIT" --precisions bf16 \
  --rows tower extraction "${SIZES[@]}"
part "profile_step.py $RN" 60 "$OUT/profile_step.md" "$PY" benchmarks/profile_step.py --model "$RN" \
  --mixed-precision bf16 "${PROFILE[@]}"
part "accum_memory.py $RN" 100 "$OUT/accum_memory.md" "$PY" benchmarks/accum_memory.py --model "$RN" \
  --mixed-precision bf16 "${ACCUM[@]}"

echo "gpu_session: $((SECONDS - START))s in all; tables in $OUT: $(ls "$OUT" | tr '\n' ' ')" >&2
if [ "${#FAILED[@]}" -gt 0 ]; then
  echo "gpu_session: failed: ${FAILED[*]}" >&2
  exit 1
fi
