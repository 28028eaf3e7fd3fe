#!/usr/bin/env bash
# vgpu's offline GPU acceptance check: proves vgpu's GPU paths on this host's GPU and driver, without network.
#
#   tools/gpu-check.sh [--python PY] [--wheelhouse DIR] [--no-install] [--out DIR] [--budget SECONDS]
#                      [--keep-scratch]
#
# Steps, each run and reported whatever the others did:
#   install      pip install --no-index --no-deps of the wheelhouse (make gpu-wheelhouse) into a scratch --target
#   environment  nvidia-smi, driver and CUDA, Python and package versions; imports everything vgpu needs
#   discovery    vgpud's NVML discovery against nvidia-smi -q -x                          (GPU)
#   pytest-gpu   pytest -m gpu, every result, no -x                                       (GPU)
#   enforce      bench/enforce.py on CuPy: share error, overhead, memory-limit exactness  (GPU)
#   preempt      bench/preempt.py with device-resident CuPy state: freed vs. the copy      (GPU)
# GPU steps are skipped with one line saying why when nvidia-smi is missing or sees no GPU. Nothing here changes
# the GPU's settings: no MIG mode switch, no reset, no clocks. Each step is capped (timeout) and all of them
# together by --budget (default 480 s). JSON lands in $OUT (default ./gpu-check-out): summary.json,
# environment.json, discovery.json, pytest-gpu.json, enforce.json, preempt.json, and gpu-check.log.
# Exit 0 when no step failed; 1 when one did; 2 for bad usage. Environment: OUT, GPU_CHECK_BUDGET_S (the default
# budget), GPU_CHECK_PYTEST_ARGS (extra pytest arguments, e.g. -k to rerun a few GPU tests).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS=$ROOT/tools
PY=python3
WHEELHOUSE=$ROOT/wheelhouse
INSTALL=1
OUT=${OUT:-./gpu-check-out}
BUDGET=${GPU_CHECK_BUDGET_S:-480}
KEEP_SCRATCH=0
MIN_STEP_S=15
# Per-step caps in seconds (the budget caps their sum).
CAP_INSTALL=180
CAP_ENVIRONMENT=120
CAP_DISCOVERY=60
CAP_PYTEST=240
CAP_ENFORCE=150
CAP_PREEMPT=180

usage() { sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while (($#)); do
    case $1 in
        --python) PY=${2:?--python needs an interpreter}; shift 2 ;;
        --wheelhouse) WHEELHOUSE=${2:?--wheelhouse needs a folder}; shift 2 ;;
        --no-install) INSTALL=0; shift ;;
        --out) OUT=${2:?--out needs a folder}; shift 2 ;;
        --budget) BUDGET=${2:?--budget needs seconds}; shift 2 ;;
        --keep-scratch) KEEP_SCRATCH=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "gpu-check: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ $BUDGET =~ ^[0-9]+$ ]] || { echo "gpu-check: --budget must be whole seconds, got $BUDGET" >&2; exit 2; }
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "gpu-check: $PY is not a Python 3.11 or newer (use --python PY)" >&2
    exit 2
fi
PY=$("$PY" -c 'import sys; print(sys.executable)')
if [[ -d $WHEELHOUSE ]]; then WHEELHOUSE=$(cd "$WHEELHOUSE" && pwd); fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
rm -f "$OUT"/{summary,environment,discovery,pytest-gpu,enforce,preempt}.json "$OUT/gpu-check.log"
LOG=$OUT/gpu-check.log
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/vgpu-gpu-check.XXXXXX")
STEPS=$SCRATCH/steps.jsonl
TARGET=$SCRATCH/site
: >"$STEPS"

cleanup() {
    if ((KEEP_SCRATCH)); then
        echo "gpu-check: scratch kept in $SCRATCH"
    else
        rm -rf "$SCRATCH"
    fi
}
trap cleanup EXIT
trap 'echo "gpu-check: interrupted" >&2; exit 130' INT TERM

cd "$ROOT"
START=${EPOCHREALTIME:-$(date +%s)}
DEADLINE=$((${START%.*} + BUDGET))

say() { echo "gpu-check: $*" | tee -a "$LOG"; }
now() { echo "${EPOCHREALTIME:-$(date +%s)}"; }

record() {  # NAME STATUS WHY SECONDS LIMIT
    "$PY" "$TOOLS/gpu_check_report.py" record --steps "$STEPS" --name "$1" --status "$2" --why "$3" \
        --seconds "$4" ${5:+--limit "$5"}
}

# run_step NAME CAP COMMAND...: runs COMMAND under timeout (its cap, or what is left of the budget), shows and
# logs its output, and records ok/failed with the command's last "result: ..." line (or its last line) as why.
run_step() {
    local name=$1 cap=$2
    shift 2
    local left=$((DEADLINE - $(date +%s)))
    if ((left < MIN_STEP_S)); then
        local why="not run: the ${BUDGET} s budget is spent"
        say "$name: $why"
        record "$name" failed "$why" 0 ""
        return 0
    fi
    local limit=$((cap < left ? cap : left))
    say "== $name (at most ${limit} s)"
    local t0 rc
    t0=$(now)
    set +e
    timeout --kill-after=10 "$limit" "$@" </dev/null 2>&1 | tee "$SCRATCH/$name.out"
    rc=${PIPESTATUS[0]}
    set -e
    cat "$SCRATCH/$name.out" >>"$LOG"
    local seconds why status=ok
    seconds=$("$PY" -c 'import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 1))' "$t0" "$(now)")
    why=$(grep '^result: ' "$SCRATCH/$name.out" | tail -n 1 | cut -c 9- || true)
    if ((rc == 124 || rc == 137)); then
        status=failed
        why="timed out after ${limit} s${why:+ ($why)}"
    elif ((rc != 0)); then
        status=failed
        [[ -n $why ]] || why="exit $rc: $(grep -v '^[[:space:]]*$' "$SCRATCH/$name.out" | tail -n 1 || true)"
    fi
    [[ -n $why ]] || why="exit 0"
    say "$name: $status: $why"
    record "$name" "$status" "$why" "$seconds" "$limit"
}

skip_gpu_step() {  # NAME WHAT
    say "no NVIDIA GPU here ($GPU_REASON): skipping $2"
    record "$1" skipped "no NVIDIA GPU here ($GPU_REASON)" 0 ""
}

install_wheelhouse() {  # WHEELHOUSE TARGET PY
    local wheelhouse=$1 target=$2 py=$3
    if [[ ! -f $wheelhouse/requirements.txt ]]; then
        echo "result: no wheelhouse at $wheelhouse (no requirements.txt): build it with make gpu-wheelhouse" \
            "on a machine with network and copy it here, or pass --wheelhouse DIR or --no-install"
        return 1
    fi
    # Only the wheelhouse counts: no index, no pip config (constraints, find-links) of this host.
    if ! env -u PIP_CONSTRAINT -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null \
        "$py" -m pip install --no-index --no-deps --disable-pip-version-check --no-warn-script-location \
        --find-links "$wheelhouse" --target "$target" -r "$wheelhouse/requirements.txt"; then
        echo "result: pip install --no-index from $wheelhouse into $target failed (see above)"
        return 1
    fi
    local count
    count=$(grep -c '^[A-Za-z0-9]' "$wheelhouse/requirements.txt")
    echo "result: installed $count distributions from $wheelhouse into $target"
}
export -f install_wheelhouse

say "vgpu GPU acceptance check in $ROOT, $("$PY" --version 2>&1) at $PY, JSON into $OUT, budget ${BUDGET} s"

# Is there a GPU? nvidia-smi must exist and list one (it fails when the driver or NVML cannot start).
GPU_REASON=""
if ! command -v nvidia-smi >/dev/null 2>&1; then
    GPU_REASON="nvidia-smi not found"
elif ! SMI_LIST=$(timeout 60 nvidia-smi -L 2>&1); then
    GPU_REASON="nvidia-smi -L failed: $(head -n 1 <<<"$SMI_LIST")"
elif ! grep -q '^GPU ' <<<"$SMI_LIST"; then
    GPU_REASON="nvidia-smi lists no GPU"
else
    say "GPUs: $(grep '^GPU ' <<<"$SMI_LIST" | tr '\n' ';')"
    timeout 60 nvidia-smi 2>&1 | tee -a "$LOG" || true
fi

# The checkout's code first (what is being checked), then the wheelhouse's packages, before site-packages.
RUN_PATH=$ROOT:$ROOT/daemon:$ROOT/client:$TOOLS
if ((INSTALL)); then
    run_step install "$CAP_INSTALL" bash -c 'install_wheelhouse "$@"' _ "$WHEELHOUSE" "$TARGET" "$PY"
    RUN_PATH=$RUN_PATH:$TARGET
else
    say "install: skipped (--no-install): using the packages of $PY as they are"
    record install skipped "--no-install: the packages of $PY as they are" 0 ""
fi
export PYTHONPATH=$RUN_PATH${PYTHONPATH:+:$PYTHONPATH}
export PYTHONDONTWRITEBYTECODE=1

ENV_ARGS=(environment --out "$OUT" --gpu-reason "$GPU_REASON")
if ((INSTALL)); then ENV_ARGS+=(--wheel-target "$TARGET"); fi
run_step environment "$CAP_ENVIRONMENT" "$PY" "$TOOLS/gpu_check_report.py" "${ENV_ARGS[@]}"

if [[ -n $GPU_REASON ]]; then
    skip_gpu_step discovery "the NVML discovery check"
    skip_gpu_step pytest-gpu "pytest -m gpu"
    skip_gpu_step enforce "bench/enforce.py on CuPy"
    skip_gpu_step preempt "bench/preempt.py with CuPy state"
else
    run_step discovery "$CAP_DISCOVERY" "$PY" "$TOOLS/gpu_discovery.py" --json-out "$OUT/discovery.json"
    mapfile -t GPU_TESTS < <(grep -rl --include='test_*.py' -e 'pytest.mark.gpu' tests | sort)
    # shellcheck disable=SC2086 # GPU_CHECK_PYTEST_ARGS is a list of extra pytest arguments
    run_step pytest-gpu "$CAP_PYTEST" "$PY" "$TOOLS/gpu_check_report.py" pytest --out "$OUT" -- \
        -m gpu -v -p no:cacheprovider ${GPU_CHECK_PYTEST_ARGS:-} "${GPU_TESTS[@]}"
    run_step enforce "$CAP_ENFORCE" "$PY" "$TOOLS/gpu_check_report.py" enforce --out "$OUT" -- \
        --backend cupy --seconds 2 --budget-mib 2048
    run_step preempt "$CAP_PREEMPT" "$PY" "$TOOLS/gpu_check_report.py" preempt --out "$OUT" -- \
        --backend cupy --rounds 10 --state-mib 16,64,256 --state-rounds 5
fi

set +e
"$PY" "$TOOLS/gpu_check_report.py" summary --steps "$STEPS" --out "$OUT" --gpu-reason "$GPU_REASON" \
    --budget "$BUDGET" 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
set -e
exit "$rc"
