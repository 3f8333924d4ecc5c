#!/usr/bin/env bash
# Every accelerator figure of the benchmarks in one command, within a wall-time budget:
#
#   bash benchmarks/gpu_suite.sh [OUTDIR]             # paper presets at 256 px, on a GPU
#   bash benchmarks/gpu_suite.sh --dry-run [OUTDIR]   # the same pipeline on CPU, tiny sizes
#
# OUTDIR (default runs/gpu_suite) receives suite.log (everything printed) and results.jsonl
# (one JSON line per result row, written as each row is done); both are appended to, so a
# second run for the parts a first one had no time for adds to them. The parts run in the
# order of PARTS, each command under `timeout` cut to what is left of SUITE_BUDGET_S (default
# 480 s; a command is skipped when under 40 s are left), so a slow compile costs the commands
# after it, not the whole run. By default, most important first:
#   max_batch       largest bf16 batch per device, without and with remat (compile-only, in
#                   the background from the start: it needs the CPUs, the timings the GPU)
#   train_bf16      train step per architecture, bf16, global batch 8, 10 steps (SegDiff's,
#                   the slowest to compile, after the analysis)
#   sampling        EnsemDiff, 5-member DDPM over the full 1000-step chain, 2 images
#   analysis        EnsemDiff, all 1000 timesteps for 2 images, vmapped in chunks of 16
#   sampling_ddim   MedSegDiff and SegDiff, 5-member DDIM-50, 2 images
#   train_fp32      train step per architecture, float32 (TF32)
# PARTS="sampling_ddim train_fp32=segdiff,nnunet" runs only those, in that order, the second
# for two architectures (e.g. the rest of a cut run). PYTHON picks the interpreter (default
# .venv/bin/python when present, else python3). No network is used.
set -uo pipefail

DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY=1; shift; fi
OUT=${1:-runs/gpu_suite}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
LOG="$OUT/suite.log"
JSONL="$OUT/results.jsonl"
touch "$JSONL"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if ((DRY)); then
  export JAX_PLATFORMS=cpu
  BUDGET=${SUITE_BUDGET_S:-300}
  PRESET=tiny SIZE=16 TRAIN_BATCH=2 TRAIN_STEPS=2
  TRAIN_ARCHS="ensemdiff" DDIM_ARCHS="medsegdiff" MB_ARCHS="nnunet"
  PARTS=${PARTS:-max_batch train_bf16 sampling analysis sampling_ddim train_fp32=nnunet}
  T=50 DDIM_STEPS=5 MEMBERS=2 SAMPLE_BATCH=1 ANALYSIS_IMAGES=2 CHUNK=8
  MB_ARGS=(--dtypes=float32 --memory_gb=0.05)
else
  BUDGET=${SUITE_BUDGET_S:-480}
  PRESET=paper SIZE=256 TRAIN_BATCH=8 TRAIN_STEPS=10
  TRAIN_ARCHS="ensemdiff medsegdiff nnunet segdiff" DDIM_ARCHS="medsegdiff segdiff"
  MB_ARCHS="segdiff ensemdiff medsegdiff nnunet"
  # SegDiff's train step has about three times the convolutions of the others and the
  # longest compile: it comes after the sampling and analysis figures.
  PARTS=${PARTS:-max_batch train_bf16=ensemdiff,medsegdiff,nnunet sampling analysis \
train_bf16=segdiff sampling_ddim train_fp32}
  T=1000 DDIM_STEPS=50 MEMBERS=5 SAMPLE_BATCH=2 ANALYSIS_IMAGES=2 CHUNK=16
  MB_ARGS=(--dtypes=bfloat16 --max_compiles=5)
  # The allocator's limit is this fraction of the card (JAX's default is 0.75). 0.9 lets the
  # max-batch figures use most of the card and still leaves room, next to the process that
  # preallocates it, for the CUDA contexts of the compile-only max_batch processes.
  export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
fi
START=$SECONDS

log() { echo "$*" | tee -a "$LOG"; }
left() { echo $((BUDGET - (SECONDS - START))); }
status() { if (($1 == 124)); then echo "timed out"; else echo "exit $1"; fi; }

# run NAME LIMIT_S COMMAND...: COMMAND under timeout (cut to the budget left), output teed.
run() {
  local name=$1 limit=$2 budget
  shift 2
  budget=$(($(left) - 10))
  if ((budget < 30)); then
    log "== $name: skipped, $(left) s of the suite's budget left"
    return
  fi
  ((limit > budget)) && limit=$budget
  log "== $name (timeout ${limit}s, at ${SECONDS}s): $*"
  timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  log "== $name: $(status "${PIPESTATUS[0]}") after $((SECONDS - START)) s"
}

log "== gpu_suite $( ((DRY)) && echo '--dry-run ')$(date -u +%FT%TZ), budget ${BUDGET}s, parts: $PARTS"
log "commit $(git rev-parse HEAD 2>/dev/null || echo unknown); python $PYTHON"
if command -v nvidia-smi >/dev/null; then timeout 20 nvidia-smi 2>&1 | tee -a "$LOG"; fi
SUITE_DRY=$DRY timeout 120 "$PYTHON" - <<'EOF' 2>&1 | tee -a "$LOG"
import importlib, os, sys
missing = []
for name in ("jax", "flax", "optax", "orbax.checkpoint", "ml_collections", "grain",
             "array_record", "tensorflow_datasets", "tifffile", "PIL"):
    try:
        importlib.import_module(name)
    except Exception as e:  # report every missing package at once
        missing.append(f"{name} ({type(e).__name__}: {e})")
if missing:
    sys.exit("missing packages: " + "; ".join(missing))
import jax, jaxlib, flax, optax
print(f"python {sys.version.split()[0]}; jax {jax.__version__}, jaxlib {jaxlib.__version__}, "
      f"flax {flax.__version__}, optax {optax.__version__}")
print(f"devices: {jax.devices()}; XLA_PYTHON_CLIENT_MEM_FRACTION="
      f"{os.environ.get('XLA_PYTHON_CLIENT_MEM_FRACTION', 'unset')}")
if os.environ["SUITE_DRY"] == "0" and jax.devices()[0].platform != "gpu":
    sys.exit("no GPU: JAX runs on " + jax.devices()[0].platform)
EOF
if ((PIPESTATUS[0])); then
  log "== preflight failed: the interpreter lacks packages or devices (see above)"
  exit 2
fi

# Background, niced and compile-only, one process per architecture and remat setting (their
# logs join suite.log at the end): no preallocation (they hold no arrays) and no autotuning (it
# would run kernels on the GPU while the timings run; the algorithms it would pick change the
# temporaries little next to the activations).
MB_LOGS=$(mktemp -d)
MB_PIDS=()
MB_JOBS=()
MB_LIMIT=$(($(left) - 15))
for part in $PARTS; do
  [[ $part == max_batch || $part == max_batch=* ]] || continue
  [[ $part == *=* ]] && MB_ARCHS=${part#*=}
  for arch in ${MB_ARCHS//,/ }; do
    for remat in 0 1; do
      XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_autotune_level=0" \
        nice -n 19 timeout -k 10 $MB_LIMIT "$PYTHON" benchmarks/max_batch.py --archs="$arch" \
        --presets=$PRESET --sizes=$SIZE --remat=$remat "${MB_ARGS[@]}" --jsonl="$JSONL" \
        >"$MB_LOGS/$arch-$remat.log" 2>&1 &
      MB_PIDS+=($!)
      MB_JOBS+=("$arch-$remat")
    done
  done
  log "== max_batch: ${MB_JOBS[*]} (architecture-remat) in the background, ${MB_LIMIT}s at most"
done

# Each part takes the architectures after its '=' (comma-separated) or the mode's default.
train() {  # train DTYPE ARCHS: one process per architecture, so each has its own memory peak
  for arch in $2; do
    run "train_step $arch $1" 180 "$PYTHON" benchmarks/train_step.py --archs="$arch" \
      --presets=$PRESET --sizes=$SIZE --batch_size=$TRAIN_BATCH --steps=$TRAIN_STEPS \
      --dtype="$1" --jsonl="$JSONL"
  done
}
part_train_bf16() { train bfloat16 "${1:-$TRAIN_ARCHS}"; }
part_train_fp32() { train float32 "${1:-$TRAIN_ARCHS}"; }
part_sampling() {
  for arch in ${1:-ensemdiff}; do
    run "sampling $arch ddpm-$T" 240 "$PYTHON" benchmarks/sampling.py --archs="$arch" \
      --preset=$PRESET --image_size=$SIZE --samplers=ddpm --ddpm_steps=$T --members=$MEMBERS \
      --batch=$SAMPLE_BATCH --dtype=bfloat16 --jsonl="$JSONL"
  done
}
part_analysis() {
  for arch in ${1:-ensemdiff}; do
    run "analysis $arch" 200 "$PYTHON" benchmarks/analysis.py --arch="$arch" \
      --preset=$PRESET --image_size=$SIZE --dtype=bfloat16 --num_images=$ANALYSIS_IMAGES \
      --num_timesteps=$T --chunk_size=$CHUNK --repeats=1 --no_loop --jsonl="$JSONL"
  done
}
part_sampling_ddim() {
  for arch in ${1:-$DDIM_ARCHS}; do
    run "sampling $arch ddim-$DDIM_STEPS" 150 "$PYTHON" benchmarks/sampling.py --archs="$arch" \
      --preset=$PRESET --image_size=$SIZE --samplers=ddim --ddpm_steps=$T \
      --ddim_steps=$DDIM_STEPS --members=$MEMBERS --batch=$SAMPLE_BATCH --dtype=bfloat16 \
      --jsonl="$JSONL"
  done
}

for part in $PARTS; do
  name=${part%%=*} archs=""
  [[ $part == *=* ]] && archs=${part#*=}
  case $name in
    max_batch) ;;
    train_bf16 | train_fp32 | sampling | analysis | sampling_ddim) "part_$name" "${archs//,/ }" ;;
    *) log "== unknown part $part: skipped" ;;
  esac
done

for i in "${!MB_PIDS[@]}"; do
  wait "${MB_PIDS[$i]}"
  log "== max_batch ${MB_JOBS[$i]}: $(status $?) after $((SECONDS - START)) s"
  tee -a "$LOG" <"$MB_LOGS/${MB_JOBS[$i]}.log"
done
rm -r "$MB_LOGS"

log "== done after $((SECONDS - START)) s; the result rows in $JSONL:"
tee -a "$LOG" <"$JSONL"
