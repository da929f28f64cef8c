#!/usr/bin/env bash
# Every GPU measurement in docs/benchmarks.md, in one run (one device-tool call).
# From the repository root, with the extra wheels in .whl/ (open_clip_torch, ftfy, wcwidth,
# clip-interrogator, platformdirs, transformers, tokenizers, typer: see docs/benchmarks.md):
#     bash bench/gpu_run.sh OUTDIR           (PARTS="modes-turbo compare" to run some parts only)
# Each part has its own time limit and writes OUTDIR/<part>.md; all output goes to OUTDIR/all.log.
set -u
out=${1:-.bench-out/gpu}
mkdir -p "$out"
exec > >(tee -a "$out/all.log") 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
export PYTHONPATH=/tmp/site:$PWD/src:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, transformers, open_clip; print('torch', torch.__version__, '| transformers',
transformers.__version__, '| open_clip', open_clip.__version__)" | tee -a "$out/gpu.txt"

parts=${PARTS:-modes-turbo compare memory beams}  # compare-best: best mode only, 2 images  # PARTS="..." runs a subset
part() {  # part NAME SECONDS SCRIPT ARGS...
    local name=$1 limit=$2; shift 2
    case " $parts " in *" $name "*) ;; *) return 0 ;; esac
    echo "=== $name (limit ${limit}s): $*"
    local t0=$SECONDS
    timeout "$limit" python3 "$@" --markdown-out "$out/$name.md"
    echo "=== $name: exit $? after $((SECONDS - t0))s"
}

# issue 4: turbo vs best over 20 images, two model sizes, full vocabulary
part modes-turbo ${TURBO_LIMIT:-200} bench/modes.py --device cuda --sizes b32,l14 --images 20 --variants best,turbo \
    --precision-check none
# issue 3: the reference vs image2prompt at ViT-L/14 size, 2048 candidates, full vocabulary, exact
# reference ranking (so prompts are comparable), plus full-vocabulary table building at ViT-B/32
part compare 170 bench/compare_reference.py --device cuda --sizes l14 --modes fast,classic,best --images 3 \
    --full-vocab --ref-chunk-size exact
part compare-best 95 bench/compare_reference.py --device cuda --sizes l14 --modes best --images 2 \
    --full-vocab --ref-chunk-size exact --skip-tables
# issue 3: peak GPU memory, ViT-L/14 + BLIP-base sizes, pool 512 vs 2048, ours vs the reference
part memory 100 bench/memory.py --device cuda --pools 512,2048 --images 2
# issue 4: beam 2 and 4; issue 3: fp16 vs fp32 prompt changes
part beams 100 bench/modes.py --device cuda --sizes b32 --images 10 --variants "best,best beam 2,best beam 4" \
    --precision-check fp16
