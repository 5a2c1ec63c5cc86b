#!/usr/bin/env bash
# The one command for a GPU session (prepare .whl/ first with bench/gpu_prepare.sh):
#   eval "$(bash .whl/install.sh)" && bash bench/gpu_run.sh
# Runs both GPU benchmarks in-process on a bare copy of the tree (no install of this project: the
# package paths are linked up below), each under its own time limit, and leaves the JSON and the
# logs in $OUT (default bench/out/gpu). Limits: GPU_BENCH_LIMIT_S per benchmark (default 180 s; three runs fit the device tool's 600 s per command).
# EXTRA_DETECT / EXTRA_TRAIN / EXTRA_ENGINE: extra flags, e.g. EXTRA_DETECT="--compile".
# `bash bench/gpu_run.sh --smoke`: the same on a CPU with tiny models (CI rehearses the GPU run so).
set -uo pipefail
cd "$(dirname "$0")/.."
SMOKE=""
[ "${1:-}" = "--smoke" ] && SMOKE="--smoke"
OUT=${OUT:-bench/out/gpu}
LIMIT=${GPU_BENCH_LIMIT_S:-180}
mkdir -p "$OUT"
# scone_data._schemas and scone_train are package-dir mappings in pyproject.toml; mirror them
# (the _schemas link only where no install maps it already, i.e. on the bare tree).
links=$(mktemp -d)
ln -s "$PWD/training" "$links/scone_train"
export PYTHONPATH="$PWD:$links${PYTHONPATH:+:$PYTHONPATH}"
python -c "import scone_data._schemas" 2>/dev/null || ln -sfn ../schemas scone_data/_schemas
A=${GPU_ASSETS:-.whl/assets}  # bench/gpu_assets.py
rm -f "$OUT/rc.txt"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; date -u;
  python -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"; } \
  > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"
run() {
  local name=$1; shift
  local t0=$SECONDS
  timeout "$LIMIT" python "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc=$rc in $((SECONDS - t0)) s" | tee -a "$OUT/rc.txt"  # 124: past the limit
  tail -n 20 "$OUT/$name.log"
}
# shellcheck disable=SC2086
run detect_segment bench/gpu_detect_segment.py --image-dir "$A/images" --tokenizer-dir "$A/bert-base-uncased" \
  --out "$OUT/gpu_detect_segment.json" $SMOKE ${EXTRA_DETECT:-}
# shellcheck disable=SC2086
run train bench/gpu_train.py --out "$OUT/gpu_train.json" $SMOKE ${EXTRA_TRAIN:-}
[ -n "$SMOKE" ] || run train_deep bench/gpu_train.py --preset deep --out "$OUT/gpu_train_deep.json" ${EXTRA_TRAIN:-}
# The engine benchmark (insertion + VLM verification) needs an image-edit and a VLM snapshot under $A
# (tens of GB: they do not travel with .whl; bench/gpu_engine.py --help names the folders) and
# diffusers; skipped without the weights. Its own limit (default 300 s): with it the run is past 600 s.
# Its smoke mode runs from `make bench`.
if [ -z "$SMOKE" ]; then
  if python bench/gpu_engine.py --assets "$A" --find-weights; then
    # shellcheck disable=SC2086
    LIMIT=${GPU_ENGINE_LIMIT_S:-300} run engine bench/gpu_engine.py --assets "$A" --out "$OUT/gpu_engine.json" ${EXTRA_ENGINE:-}
  else
    echo "== engine: skipped (no weights under $A)"
  fi
fi
! grep -qv "rc=0 " "$OUT/rc.txt"
