#!/usr/bin/env bash
# Two training runs of the world model side by side on one GPU: from scratch, and from the shipped weights,
# both with the group heads and the harder scene mix. Each writes its folder as OUT/<run>.tgz and its log as
# OUT/<run>.log; evaluate them afterwards on the CPU (runs/README.md). The same script runs on the CPU for a
# check: bash runs/gpu_runs.sh /tmp/check 0.2 cpu 1 8
set -u
out=${1:?usage: bash runs/gpu_runs.sh OUT [MINUTES] [DEVICE] [WORKERS] [BATCH]}
minutes=${2:-7}; device=${3:-cuda}; workers=${4:-7}; batch=${5:-192}
work=$(mktemp -d)
mkdir -p "$out"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__,
'gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)" | tee "$out/env.txt"
common=(--device "$device" --workers "$workers" --threads 2 --no-evaluate --steps 1000000 --minutes "$minutes"
        --batch-size "$batch" --bf16 --group-weight 0.3 --pair-share 0.35 --three-share 0.35 --log-every 100
        --checkpoint-minutes 2)
limit=$(python3 -c "print(int(60 * $minutes + 60))")  # a stop (SIGTERM) saves too; the budget ends it first
timeout -s TERM "$limit" python3 -m helpers train --out "$work/scratch" "${common[@]}" --vision-steps 500 \
  --lr 2e-3 --warmup 200 --aux-weight 0.5 --checkpoint "$work/scratch-ckpt" >"$out/scratch.log" 2>&1 &
timeout -s TERM "$limit" python3 -m helpers train --out "$work/resume" "${common[@]}" --resume data/kosmos2-tiny-world \
  --heads-steps 150 --vision-steps 0 --lr 8e-4 --warmup 100 --aux-weight 0.3 --checkpoint "$work/resume-ckpt" \
  >"$out/resume.log" 2>&1 &
if [ "$device" = cuda ]; then
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv -l 30 >"$out/gpu.csv" 2>&1 &
  smi=$!
fi
wait %1 %2
[ -n "${smi:-}" ] && kill "$smi"
for run in scratch resume; do
  folder=$run
  [ -f "$work/$folder/model.safetensors" ] || folder=$run-ckpt  # killed before the end: its last checkpoint
  [ -f "$work/$folder/model.safetensors" ] && tar -czf "$out/$run.tgz" -C "$work" "$folder"
done
ls -la "$out"
