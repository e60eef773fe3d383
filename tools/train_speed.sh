#!/bin/bash
# Seconds per baseline training epoch on this GPU, for several settings of tools/train.py, run one after
# another in one command (GPU).  Usage: bash tools/train_speed.sh DATA OUTDIR [EPOCHS]
# Prints one line per variant: its name and each epoch's epoch_s (training only, evaluation excluded; the
# first epoch pays for cuDNN autotuning and, with --compile, for compilation).
set -u
DATA=${1:?data spec}; OUT=${2:?output folder}; E=${3:-5}
T="python3 tools/train.py --data $DATA --wd 5e-4 --cutout 16 --eval-every 1000"
run() { name=$1; shift; $T --out "$OUT/$name" "$@" > "$OUT/$name.txt" 2>&1 || echo "$name failed: $(tail -3 "$OUT/$name.txt")"; }
mkdir -p "$OUT"
run no_benchmark --epochs "$E" --no-cudnn-benchmark
run benchmark --epochs "$E"
run benchmark_b1024 --epochs "$E" --batch 1024 --lr 0.8
run compile --epochs "$((E + 1))" --compile
for f in "$OUT"/*/train_log.jsonl; do
  python3 -c "import json,sys; r=[json.loads(l) for l in open(sys.argv[1])]; print(sys.argv[1].split('/')[-2], [x['epoch_s'] for x in r], 'median', sorted(x['epoch_s'] for x in r[1:])[len(r[1:])//2] if len(r)>1 else None)" "$f"
done
