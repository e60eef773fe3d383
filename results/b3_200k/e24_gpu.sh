# Session 10's second GPU call for issue 4's "<= 200 KB within 1 point" from baseline3: QAT of
# sweeps/mnv2_b3_200k_e24.yaml (24 epochs instead of 16; lr 0.01 and 0.02, kd 0.5) from the same cached
# 0.93 model (92.12% fp32) as next_gpu.sh.  Carry and hold as in next_gpu.sh; command: bash results/b3_200k/e24_gpu.sh
# About 6.5 minutes on one H100 (14.2 s per QAT epoch with two runs side by side in session 10).
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl; export PYTHONPATH=/tmp/site
W=/tmp/b3_200k_e24; mkdir -p $W/cache; cp .devdata/b3_200k_cache/*.mbz $W/cache/
python3 tools/carry_xz.py unpack .devdata/baseline3.pt.sxz /tmp/baseline3.pt
D="--baseline /tmp/baseline3.pt --data npz:.devdata"
timeout 520 python3 tools/sweep.py run sweeps/mnv2_b3_200k_e24.yaml --out $W $D --prune-epochs 6 --prune-final-epochs 36 \
    --prune-restart 60 --caps results/sensitivity/caps.json --jobs 2 > $W/stdout.txt 2>&1; echo sweep rc $?
tail -c 1200 $W/stdout.txt
rm -f $W/cache/decoded_*.pt $W/cache/*.mbz; cd /tmp && tar cf $OUT/b3_200k_e24.tar b3_200k_e24 && ls -la $OUT
# Then here: python tools/sweep.py finalize OUT sweeps/mnv2_b3_200k_e24.yaml; tools/reduce_params.py
# (--scale-bits 8 --bias-bits 8) on each model; see results/b3_200k/README.md.
