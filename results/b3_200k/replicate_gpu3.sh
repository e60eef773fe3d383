# Session 10's sixth GPU call, the end of replicate_gpu.sh / replicate_gpu2.sh (the second ran out of its 10 minutes
# in QAT epoch 16 of 16, at 13.5 s per QAT epoch alone on that H100): its restarted 0.93 model (91.75% on the
# GPU after the 60-epoch cycle) carried in as .devdata/b3_200k_rep_r60/, then only the 16 QAT epochs (kd 0.5).
# carry: .devdata/cifar10_jpeg_{train,test}.npz, .devdata/baseline3.pt.sxz, .devdata/b3_200k_rep_r60, .whl
# command: bash results/b3_200k/replicate_gpu3.sh
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl; export PYTHONPATH=/tmp/site
W=/tmp/b3_200k_rep3; mkdir -p $W/cache; cp .devdata/b3_200k_rep_r60/*.mbz $W/cache/
python3 tools/carry_xz.py unpack .devdata/baseline3.pt.sxz /tmp/baseline3.pt
timeout 500 python3 tools/sweep.py run sweeps/mnv2_b3_200k.yaml --where kd=0.5 --out $W --baseline /tmp/baseline3.pt \
    --data npz:.devdata --prune-epochs 6 --prune-final-epochs 36 --prune-restart 60 --caps results/sensitivity/caps.json \
    --jobs 1 > $W/stdout.txt 2>&1; echo sweep rc $?
tail -c 300 $W/stdout.txt; rm -f $W/cache/decoded_*.pt $W/cache/*.mbz
cd /tmp && tar cf $OUT/b3_200k_rep3.tar b3_200k_rep3 && ls -la $OUT
