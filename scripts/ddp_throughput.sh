#!/usr/bin/env bash
# Tokens/s of charlm and gpt trained by 1 and 2 CPU processes on this machine (torchrun on
# 127.0.0.1, one thread each, default model sizes). The global batch is the same for both
# (--batch-size, split over the processes): the ratio is strong scaling. The rate is that of
# the last 50 steps (metrics.json's tokens_per_s), evaluation and start-up excluded.
# Usage: scripts/ddp_throughput.sh   (PYTHON=..., STEPS=100, BATCH=32, DATA=shakespeare)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STEPS=${STEPS:-100}
BATCH=${BATCH:-32}
DATA=${DATA:-shakespeare}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export OMP_NUM_THREADS=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
echo "fastseq DDP throughput: $(getconf _NPROCESSORS_ONLN) CPUs, $STEPS steps, global batch $BATCH, data $DATA, 1 thread per process"
for model in charlm gpt; do
  for n in 1 2; do
    run="$WORK/$model-$n"
    if ! "$PY" -m torch.distributed.run --nproc-per-node "$n" --master-addr 127.0.0.1 --master-port "$(free_port)" \
        -m fastseq train "$model" --data "$DATA" --steps "$STEPS" --batch-size "$BATCH" --eval-every 1000000 \
        --threads 1 --no-progress --out "$run" > "$run.log" 2>&1; then
      echo "$model on $n process(es) failed:"; tail -20 "$run.log"; exit 1
    fi
  done
  "$PY" - "$WORK" "$model" <<'PYEOF'
import json, sys
work, model = sys.argv[1:]
rates = [json.load(open(f"{work}/{model}-{n}/metrics.json"))["tokens_per_s"] for n in (1, 2)]
print(f"{model:<7} 1 process {rates[0]:>9,.0f} tokens/s   2 processes {rates[1]:>9,.0f} tokens/s"
      f"   speed-up {rates[1] / rates[0]:.2f}x")
PYEOF
done
