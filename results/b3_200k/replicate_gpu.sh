# Session 10's fourth GPU call: the whole 200 KB recipe once more from baseline3, nothing cached (a second pruned
# 0.93 model, to see whether the result depends on the one model that results/b3_200k/qat started from):
# capped chain 0.5 -> 0.93 (6 epochs per step, 36 at 0.93), a second 60-epoch cycle at 0.93 with its zeros held,
# then 16 QAT epochs with kd 0.5 (sweeps/mnv2_b3_200k.yaml, --where kd=0.5).
# carry: .devdata/cifar10_jpeg_{train,test}.npz, .devdata/baseline3.pt.sxz, .whl   command: bash results/b3_200k/replicate_gpu.sh
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl; export PYTHONPATH=/tmp/site
W=/tmp/b3_200k_rep; mkdir -p $W
python3 tools/carry_xz.py unpack .devdata/baseline3.pt.sxz /tmp/baseline3.pt
timeout 555 python3 tools/sweep.py run sweeps/mnv2_b3_200k.yaml --where kd=0.5 --out $W --baseline /tmp/baseline3.pt \
    --data npz:.devdata --prune-epochs 6 --prune-final-epochs 36 --prune-restart 60 --caps results/sensitivity/caps.json \
    --jobs 1 > $W/stdout.txt 2>&1; echo sweep rc $?
tail -c 600 $W/stdout.txt; rm -f $W/cache/decoded_*.pt; cd /tmp && tar cf $OUT/b3_200k_rep.tar b3_200k_rep && ls -la $OUT
