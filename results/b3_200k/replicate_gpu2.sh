# Session 10's fifth GPU call, the second half of replicate_gpu.sh (which ran out of its 10 minutes 29 epochs into
# the 60-epoch restart, at 4.3 s per pruning epoch on that H100): its cached chain model (36 epochs at 0.93,
# 91.33% on the GPU) carried in as .devdata/b3_200k_rep_cache/, then the restart and 16 QAT epochs (kd 0.5).
# carry: .devdata/cifar10_jpeg_{train,test}.npz, .devdata/baseline3.pt.sxz, .devdata/b3_200k_rep_cache, .whl
# command: bash results/b3_200k/replicate_gpu2.sh
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl; export PYTHONPATH=/tmp/site
W=/tmp/b3_200k_rep2; mkdir -p $W/cache; cp .devdata/b3_200k_rep_cache/*.mbz $W/cache/
python3 tools/carry_xz.py unpack .devdata/baseline3.pt.sxz /tmp/baseline3.pt
timeout 560 python3 tools/sweep.py run sweeps/mnv2_b3_200k.yaml --where kd=0.5 --out $W --baseline /tmp/baseline3.pt \
    --data npz:.devdata --prune-epochs 6 --prune-final-epochs 36 --prune-restart 60 --caps results/sensitivity/caps.json \
    --jobs 1 > $W/stdout.txt 2>&1; echo sweep rc $?
tail -c 600 $W/stdout.txt; rm -f $W/cache/decoded_*.pt $W/cache/pruned_s0.93_e6_kd0.5_f36_capsd69e3bdc.mbz
cd /tmp && tar cf $OUT/b3_200k_rep2.tar b3_200k_rep2 && ls -la $OUT
