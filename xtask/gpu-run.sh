#!/usr/bin/env bash
# The prepared GPU check, run on the lent machine from the checkout's root with the kit that
# `cargo xtask gpu-kit` wrote (device tool: carry ["gpu-carry"]):
#
#   bash xtask/gpu-run.sh [SECONDS]
#
# 1. unpacks the binary, the model weights and the data into /tmp/kit;
# 2. smoke runs: the quickstart config on CUDA, 5 steps, a timestamped line per step, 150 s at
#    most each (tells kernel compilation and autotuning from a hang: the first steps carry them),
#    once in f32 and once with `--precision bf16`; the bf16 one is refused at once, saying why,
#    where the card has no bf16;
# 3. if the f32 smoke passed, the quality recipe (configs/squad-minilm.toml: MiniLM, SQuAD v1.1,
#    2 epochs, 384/128, batch 32) on CUDA for what is left of SECONDS (default 540), in bf16 when
#    the bf16 smoke passed, else f32, a line every 20 steps, then dev EM/F1 if it finishes. For a
#    run stopped by the time limit, the timestamped step lines give its speed.
# Logs go to $OUT (or /tmp/kit/out) for the device tool to bring back; copy the figures into
# docs/gpu-notes.md.
set -uo pipefail
budget=${1:-540}
device=${QA_DEVICE:-cuda}  # QA_DEVICE=cpu tries the script here
start=$SECONDS
kit=gpu-carry
out=${OUT:-/tmp/kit/out}
mkdir -p /tmp/kit "$out"

stamp() { while IFS= read -r line; do printf '%s %s\n' "${EPOCHREALTIME}" "$line"; done; }

# Unpacked with Python's lzma: the machine's image always has python3, not necessarily xz.
unpack() { python3 -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],"wb"))' "$1" "$2"; }
unpack "$kit/qa.xz" /tmp/kit/qa && chmod +x /tmp/kit/qa || exit 1
for f in train-v1.1.json dev-v1.1.json; do unpack "$kit/$f.xz" "/tmp/kit/$f" || exit 1; done
mkdir -p /tmp/kit/model && cp "$kit"/model/*.json "$kit"/model/vocab.txt /tmp/kit/model/ || exit 1
unpack "$kit/model/model.safetensors.xz" /tmp/kit/model/model.safetensors || exit 1
model=/tmp/kit/model
export CUDA_PATH=/usr/local/cuda LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"

# smoke PRECISION: 5 steps of the quickstart config; its exit status.
smoke() {
    echo "== smoke, $1 (at $((SECONDS - start)) s)"
    timeout 150 /tmp/kit/qa train --config configs/quickstart.toml --precision "$1" \
        --set model=$model --set device=$device --set max_steps=5 --set logging_steps=1 \
        --set evaluate_during_training=false --set output_dir="/tmp/kit/smoke-$1" 2>&1 \
        | stamp | tee "$out/smoke-$1.log"
    local status=${PIPESTATUS[0]}
    echo "smoke $1 exit $status"
    return "$status"
}
smoke f32 || exit $?
precision=f32
smoke bf16 && precision=bf16

left=$((budget - (SECONDS - start)))
echo "== recipe in $precision, ${left} s at most (at $((SECONDS - start)) s)"
timeout "$left" /tmp/kit/qa train --config configs/squad-minilm.toml --precision "$precision" \
    --set model=$model --set device=$device --set logging_steps=20 \
    --set train_data=/tmp/kit/train-v1.1.json --set eval_data=/tmp/kit/dev-v1.1.json \
    --set output_dir=/tmp/kit/squad-minilm 2>&1 | stamp | tee "$out/recipe.log"
echo "recipe exit ${PIPESTATUS[0]} (124: stopped at the time limit) at $((SECONDS - start)) s"
cp /tmp/kit/squad-minilm/training_progress_scores.csv "$out/" 2>/dev/null || true
