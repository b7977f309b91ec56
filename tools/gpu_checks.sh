#!/usr/bin/env bash
# Every GPU check and benchmark of the project in one run, for a short loan of a GPU machine:
# the GPU-marked tests, target assignment, the whole-model benchmark (issue #12's settings, fp32
# and bf16, and the levers: channels-last, the sparse RoIAlign on CUDA, torch.compile) and the
# loader alone. Each step has its own time limit, so one hang cannot eat the loan; a failed step
# is reported and the next one runs. Output: the console and $LOG (default
# ${OUT:-outputs}/gpu_checks.log), then a summary of the two speedup lines of every benchmark.
#
#   make gpu-checks                      # on the GPU machine (the venv is made by make install)
#   SMOKE=1 bash tools/gpu_checks.sh     # tiny sizes in fp32 on the CPU: checks the script itself
#
# Budget on an H100/H200 (estimated, not yet measured): a few minutes; COMPILE=1 adds the
# compile warm-up. Each step is capped, so even a run that hangs everywhere ends within ~22
# minutes, and the log written so far is kept.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT_DIR=${OUT:-outputs}
mkdir -p "$OUT_DIR"
LOG=${LOG:-$OUT_DIR/gpu_checks.log}
: >"$LOG"
export NO_ALBUMENTATIONS_UPDATE=1

if [ "${SMOKE:-0}" = 1 ]; then  # the same steps, CPU-sized: one thread, one step, 2 classes, and
    # fp32 for the bf16 ones (a CPU without bf16 emulates it: minutes even at 64x96)
    DEVICE=cpu; BF16=fp32; BIG="--batch 1 --height 64 --width 96 --num-classes 2 --steps 1 --warmup 0"
    BIG="$BIG --threads 1"; SMALL="$BIG"
    OPS="--batch 1 --height 128 --width 160 --runs 1 --warmup 0 --threads 1 --cpu-only"; LIMIT=300
    LOADER=(--loader 2 --batch 2 dataset.num_train=4 dataset.num_val=2 dataset.image_size=64
            num_workers=0 "dataset.root=$OUT_DIR/shapes")
else
    if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu_checks: no CUDA device here (SMOKE=1 bash tools/gpu_checks.sh tries the steps on the CPU)" >&2
        exit 2
    fi
    DEVICE=cuda; BF16=bf16; BIG="--batch 8 --height 600 --width 1000 --steps 20 --warmup 3"
    SMALL="--batch 2 --height 600 --width 1000 --steps 20 --warmup 3"
    OPS="--runs 20"; LOADER=(--loader 20 --batch 8); LIMIT=150
fi

failures=0
step() {  # step NAME LIMIT_SECONDS COMMAND...
    local name=$1 limit=$2; shift 2
    echo "### $name" | tee -a "$LOG"
    echo "=== $*" | tee -a "$LOG"
    local start=$SECONDS
    timeout --signal=INT --kill-after=15 "$limit" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$LOG"
    [ "$rc" = 0 ] || failures=$((failures + 1))
}

bench() {  # bench NAME ARGS...
    local name=$1; shift
    step "$name" "$LIMIT" "$PY" tools/bench_model.py --device "$DEVICE" "$@"
}

"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" | tee -a "$LOG"
if [ "$DEVICE" = cuda ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$LOG"
    step "gpu tests" 240 "$PY" -m pytest -m gpu -q -p no:cacheprovider
fi
step "target assignment" 90 "$PY" tools/bench_ops.py $OPS
bench "bf16 b8" $BIG --precision $BF16
bench "bf16 b8 channels-last" $BIG --precision $BF16 --channels-last
bench "bf16 b8 sparse roi_align" $BIG --precision $BF16 --roi-align sparse
bench "bf16 b2" $SMALL --precision $BF16
bench "fp32 b2" $SMALL --precision fp32
if [ "${COMPILE:-0}" = 1 ]; then
    bench "bf16 b8 compile" $BIG --precision $BF16 --compile --warmup 5
fi
step "loader" 90 "$PY" tools/bench_model.py "${LOADER[@]}"

echo "=== summary (ours vs torchvision)" | tee -a "$LOG"
awk '/^### / {name = substr($0, 5)} /_speedup_vs_torchvision/ {print name ": " $0}' "$LOG" \
    | tee -a "$LOG.summary"
cat "$LOG.summary" >>"$LOG" && rm -f "$LOG.summary"
echo "=== $failures step(s) failed; log: $LOG"
exit $((failures > 0))
