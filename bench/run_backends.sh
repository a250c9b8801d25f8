#!/usr/bin/env bash
# The backend figures in one go (about 12-14 min on a free 2-core machine), into bench/results/:
#   1. the int8 blob: NNCF on 64 training-part frames (0021-0393), accuracy of fp32 and int8
#      on the validation frames (0404-0499) on OpenVINO -> models/carla-enet-int8.vsb
#      (written only when it loses <= 0.5 pt pixel accuracy; its card holds both accuracies)
#   2. python -m bench perf --only-backends: raw ORT / OpenVINO LATENCY / THROUGHPUT, the
#      int8 blob on both, the flow on each backend and on int8, the cost curve 256²/512²/1024²
#      per backend, the per-stage CPU budget                       -> bench/results/perf_backends.json
#   3. python -m bench live: a 30 FPS 800x600 live camera (videotestsrc is-live=true) and the
#      same as H.264 RTSP on loopback, 2 minutes each               -> bench/results/live.json
# Run it from the repository root with nothing else on the machine:  bash bench/run_backends.sh
# LIVE_SECONDS=30 shortens step 3; SKIP_LIVE=1 / SKIP_INT8=1 skip steps.
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=${VERISEG_CARLA_DIR:-../shared/data/carla}
mkdir -p bench/results
log=bench/results/perf_backends.log
: > "$log"
say() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$log"; }

say "machine: $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg); $(grep -o -w -E 'avx512_vnni|avx_vnni|amx_int8' /proc/cpuinfo | sort -u | tr '\n' ' ')"
INT8=()
if [ "${SKIP_INT8:-0}" != 1 ]; then
  say "1/3 int8 blob (NNCF)"
  if $PY -m trainer quantize models/carla-enet.vsb --data "$DATA" --calib 64 --backend openvino \
        -o models/carla-enet-int8.vsb 2>&1 | grep -v -i warning | tee -a "$log"; then :; fi
fi
[ -f models/carla-enet-int8.vsb ] && INT8=(--int8-blob models/carla-enet-int8.vsb) \
  && $PY -m model_store inspect models/carla-enet-int8.vsb >> "$log" 2>&1
say "2/3 bench perf --only-backends ${INT8[*]}"
$PY -m bench perf --only-backends --frames 200 --seconds 6 --out perf_backends "${INT8[@]}" 2>&1 | tee -a "$log"
if [ "${SKIP_LIVE:-0}" != 1 ]; then
  say "3/3 live camera, ${LIVE_SECONDS:-120} s per source"
  $PY -m bench live --seconds "${LIVE_SECONDS:-120}" --fps 30 --size 800x600 --source both 2>&1 | tee -a "$log"
fi
say "done: bench/results/perf_backends.json, bench/results/live.json, this log ($log)"
say "tables again: $PY -m bench perf --table bench/results/perf_backends.json"
