#!/usr/bin/env bash
# The GPU checks of the decoding engine (issue 18, docs/design.md §5), as one prepared run for a session
# that is lent a device (the `device` tool; a bare H200 with torch, transformers, peft, pytest, no pydantic,
# no model hub).
#
#   here, once:    bash infra/gpu-check.sh prepare
#                  (pydantic's wheels and SmolLM2's tokenizer into .gpu/, which .git/info/exclude ignores)
#   on the device: run(command="bash infra/gpu-check.sh device", carry=[".gpu"], timeout_s=560)
#
# The device part runs the model tests on CUDA (exactness pinned to float32), then `bench decode` on a
# random Llama-1B-shaped model in bf16 (K = 3 LoRA, T = 128, B = 64 and 256, eager and compiled) and
# `bench score`; every log lands in $OUT. Budget: about 8 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

prepare() {
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >>.git/info/exclude
    mkdir -p .gpu/wheels .gpu/tokenizer
    local py=".venv/bin/python"
    local pins
    pins=$("$py" -m pip list --format=freeze 2>/dev/null | grep -i -E '^(pydantic|pydantic[-_]core|annotated[-_]types|typing[-_]inspection)==')
    # shellcheck disable=SC2086
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .gpu/wheels $pins
    "$py" - <<'PY'
import shutil
from pathlib import Path
from mpo_ray.models.policies import resolve_model
source = Path(resolve_model("default"))
for f in source.iterdir():
    if f.suffix in (".json", ".txt", ".jinja") and f.name != "config.json" and "safetensors" not in f.name:
        shutil.copy(f, ".gpu/tokenizer/")
PY
    du -sh .gpu
}

device() {
    local out="${OUT:-/tmp/gpu-check}"
    mkdir -p "$out" /tmp/site
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/wheels/*.whl
    export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
    timeout 150 python3 -m pytest -q -p no:cacheprovider tests/models -m "not slow" 2>&1 | tail -30 | tee "$out/tests.txt" || true
    local common=(--no-tiny --random-1b --tokenizer .gpu/tokenizer --dtype bfloat16)
    timeout 170 python3 -m mpo_ray.benchmarks.decode "${common[@]}" --families lora --k 1,3 --batch 64,256 \
        --max-new-tokens 128 --repeats 2 2>&1 | grep -v -i warn | tee "$out/decode-eager.txt" || true
    timeout 150 python3 -m mpo_ray.benchmarks.decode "${common[@]}" --families lora --k 3 --batch 64,256 \
        --max-new-tokens 128 --repeats 2 --compile 2>&1 | grep -v -i warn | tee "$out/decode-compiled.txt" || true
    timeout 60 python3 -m mpo_ray.benchmarks.score "${common[@]}" --batch 16,64 --response-tokens 128 \
        2>&1 | grep -v -i warn | tee "$out/score.txt" || true
}

case "${1:-}" in
    prepare) prepare ;;
    device) device ;;
    *) echo "usage: bash infra/gpu-check.sh prepare|device" >&2; exit 2 ;;
esac
