#!/usr/bin/env bash
# perf_analyzer (Triton's load tool) against cellserve's KServe v2 surface, as a stateful
# (sequence) model over one gRPC stream per concurrent sequence.
#
#   benchmarks/perf_analyzer.sh                      # starts `cellserve serve` on a free port
#   benchmarks/perf_analyzer.sh --target HOST:PORT   # an already running server
#   benchmarks/perf_analyzer.sh --model python-gru -- --concurrency-range 1:8:2   # more args
#   benchmarks/perf_analyzer.sh --text 'x = [i for i in ys]'   # the keystrokes (first 20 used)
#   benchmarks/compare_perf_analyzer.py   # perf_analyzer and our load generator, same sequences
#
# Setup (offline-capable, no GPU needed), done once into $PA_VENV
# (default ~/.cache/cellserve-perf-analyzer):
#   - a virtual environment of its own with tritonclient[grpc]==2.51.0, whose wheel carries the
#     perf_analyzer binary, and nvidia-cuda-runtime-cu12 for the libcudart.so.12 it links
#     (kept apart from the project's environment: its protobuf pin would break cellserve);
#   - apt libb64-0d (libb64.so.0d, also linked by the binary);
#   - LD_LIBRARY_PATH pointed at that venv's nvidia/cuda_runtime/lib.
# Exits 3 when perf_analyzer cannot be installed (CI skips on that).
#
# Each sequence is 20 requests, one keystroke each: the text of TYPED below, one character per
# request, sent with sequence_id/START/END on a stream (--streaming --sequence-length 20).
# --stability-percentage 50 --max-trials 5 because the shared machines are noisy.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PA_VENV="${PA_VENV:-${HOME}/.cache/cellserve-perf-analyzer}"
TARGET=""
MODEL="python-lstm"
PYTHON="${ROOT}/.venv/bin/python"
TYPED='for name in sorted(os.listdir(path)):'

while [[ $# -gt 0 ]]; do
    case "$1" in
        --target) TARGET="$2"; shift 2 ;;
        --model) MODEL="$2"; shift 2 ;;
        --text) TYPED="$2"; shift 2 ;;
        --setup-only) SETUP_ONLY=1; shift ;;
        --) shift; break ;;
        *) echo "unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
    esac
done

setup() {
    if [[ ! -x "${PA_VENV}/bin/perf_analyzer" ]]; then
        python3 -m venv "${PA_VENV}" &&
            "${PA_VENV}/bin/pip" install -q 'tritonclient[grpc]==2.51.0' nvidia-cuda-runtime-cu12 || return 1
    fi
    if ! ldconfig -p | grep -q 'libb64.so.0d'; then
        { apt-get update -qq && apt-get install -y -qq libb64-0d >/dev/null; } || return 1
    fi
    local cudart
    cudart="$(echo "${PA_VENV}"/lib/python3*/site-packages/nvidia/cuda_runtime/lib)"
    export LD_LIBRARY_PATH="${cudart}${LD_LIBRARY_PATH:+:${LD_LIBRARY_PATH}}"
    "${PA_VENV}/bin/perf_analyzer" --version >/dev/null 2>&1 || return 1
}

if ! setup; then
    echo "perf_analyzer could not be installed (pip tritonclient[grpc]==2.51.0, nvidia-cuda-runtime-cu12; apt libb64-0d)" >&2
    exit 3
fi
[[ -n "${SETUP_ONLY:-}" ]] && exit 0

WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
    if [[ -n "${SERVER_PID}" ]] && kill -0 "${SERVER_PID}" 2>/dev/null; then
        kill -TERM "${SERVER_PID}" && wait "${SERVER_PID}" || true
    fi
    rm -rf "${WORK}"
}
trap cleanup EXIT

if [[ -z "${TARGET}" ]]; then
    "${PYTHON}" -m cellserve.cli serve --host 127.0.0.1 --port 0 --metrics-host 127.0.0.1 --metrics-port 0 \
        >"${WORK}/server.out" 2>"${WORK}/server.err" &
    SERVER_PID=$!
    for _ in $(seq 1 180); do  # loading torch and the models takes a while on a busy machine
        TARGET="$(sed -n 's/^cellserve listening on \(\S*\) (grpc)$/\1/p' "${WORK}/server.out")"
        [[ -n "${TARGET}" ]] && break
        kill -0 "${SERVER_PID}" 2>/dev/null || { cat "${WORK}/server.err" >&2; exit 1; }
        sleep 0.5
    done
    [[ -n "${TARGET}" ]] || { echo "the server did not start" >&2; exit 1; }
fi

# One stream of 20 steps: perf_analyzer sends step i of a sequence as its i-th request.
"${PYTHON}" - "${TYPED}" >"${WORK}/input.json" <<'EOF'
import json, sys
print(json.dumps({"data": [[{"TEXT": [c]} for c in sys.argv[1][:20]]]}))
EOF

"${PA_VENV}/bin/perf_analyzer" -m "${MODEL}" -u "${TARGET}" -i grpc \
    --streaming --sequence-length 20 --stability-percentage 50 --max-trials 5 \
    --input-data "${WORK}/input.json" -f "${WORK}/results.csv" "$@"
echo "--- ${WORK}/results.csv"
cat "${WORK}/results.csv"
