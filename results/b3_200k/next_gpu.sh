# The next GPU job for issue 4's "<= 200 KB within 1 point" from baseline3, self-contained in one device call
# (the device keeps no folder between calls): QAT of sweeps/mnv2_b3_200k.yaml (kd 0.5 and 0.7 side by side) from
# session 9's best 0.93 model (92.12% fp32), then a uniform soup of the two and 4 QAT epochs from it.
# Here, first (the GPU image has no zstandard, so the cached model travels without the entropy stage):
#   mkdir -p .devdata/b3_200k_cache && python -c "from mbz.pipeline.sweep_run import repack; \
#     repack('results/b3_200k/ptq/cache/pruned_s0.93_e6_kd0.5_f36_capsd69e3bdc_r60.mbz', \
#            '.devdata/b3_200k_cache/pruned_s0.93_e6_kd0.5_f36_capsd69e3bdc_r60.mbz', False)"
# carry: .devdata/cifar10_jpeg_{train,test}.npz, .devdata/baseline3.pt.sxz, .devdata/b3_200k_cache, .whl (msgpack);
# hold tracked .mbz/.png files out of the tree so that it all fits in 64 MiB.  command: bash results/b3_200k/next_gpu.sh
# About 5 minutes on one H200 (9.7 s per QAT epoch with two runs side by side in session 9).
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl; export PYTHONPATH=/tmp/site
W=/tmp/b3_200k; mkdir -p $W/cache; cp .devdata/b3_200k_cache/*.mbz $W/cache/
python3 tools/carry_xz.py unpack .devdata/baseline3.pt.sxz /tmp/baseline3.pt
D="--baseline /tmp/baseline3.pt --data npz:.devdata"
timeout 420 python3 tools/sweep.py run sweeps/mnv2_b3_200k.yaml --out $W $D --prune-epochs 6 --prune-final-epochs 36 \
    --prune-restart 60 --caps results/sensitivity/caps.json --jobs 2 > $W/stdout.txt 2>&1; echo sweep rc $?
python3 tools/soup.py $W/models/*.mbz -o $W/soup/soup.mbz --no-zstd --data none >> $W/stdout.txt 2>&1
timeout 150 python3 tools/qat_resume.py $W/soup/soup.mbz --name soup_e4_lr0.005 --epochs 4 --lr 0.005 --kd 0.5 $D \
    --out $W/soup >> $W/stdout.txt 2>&1; echo resume rc $?
tail -c 1500 $W/stdout.txt
rm -f $W/cache/decoded_*.pt $W/cache/*.mbz; cd /tmp && tar cf $OUT/b3_200k.tar b3_200k && ls -la $OUT
# Then here: python tools/sweep.py finalize OUT sweeps/mnv2_b3_200k.yaml; tools/repack.py for soup/; reduce_params
# (--scale-bits 8 --bias-bits 8) on each; add the folder to mbz/report/later_runs.FOLDERS; tools/frontier.py; tools/report.py.
