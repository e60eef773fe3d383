# Session 10's seventh GPU call: the shipped 200 KB recipe's last steps for the replicate model: a second QAT run
# (kd 0.7) of the restarted 0.93 model of replicate_gpu2.sh, the uniform soup of it and replicate_gpu3.sh's kd 0.5
# run (carried in without zstd as .devdata/b3_200k_rep_q/), then 4 QAT epochs at lr 0.005 from the soup.
# carry: .devdata/cifar10_jpeg_{train,test}.npz, .devdata/baseline3.pt.sxz, .devdata/b3_200k_rep_r60,
#        .devdata/b3_200k_rep_q, .whl      command: bash results/b3_200k/replicate_gpu4.sh
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl; export PYTHONPATH=/tmp/site
W=/tmp/b3_200k_rep4; mkdir -p $W/cache; cp .devdata/b3_200k_rep_r60/*.mbz $W/cache/
python3 tools/carry_xz.py unpack .devdata/baseline3.pt.sxz /tmp/baseline3.pt
timeout 330 python3 tools/sweep.py run sweeps/mnv2_b3_200k.yaml --where kd=0.7 --out $W --baseline /tmp/baseline3.pt \
    --data npz:.devdata --prune-epochs 6 --prune-final-epochs 36 --prune-restart 60 --caps results/sensitivity/caps.json \
    --jobs 1 > $W/stdout.txt 2>&1; echo sweep rc $?
python3 tools/soup.py .devdata/b3_200k_rep_q/*.mbz $W/models/*.mbz -o $W/soup/soup.mbz --no-zstd --data none >> $W/stdout.txt 2>&1
timeout 170 python3 tools/qat_resume.py $W/soup/soup.mbz --name soup_e4_lr0.005 --epochs 4 --lr 0.005 --kd 0.5 \
    --baseline /tmp/baseline3.pt --data npz:.devdata --out $W/soup >> $W/stdout.txt 2>&1; echo resume rc $?
tail -c 600 $W/stdout.txt; rm -f $W/cache/decoded_*.pt $W/cache/*.mbz
cd /tmp && tar cf $OUT/b3_200k_rep4.tar b3_200k_rep4 && ls -la $OUT
