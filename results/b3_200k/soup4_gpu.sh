# Session 10's third GPU call: more QAT epochs for the uniform soup of the four 0.93 QAT runs
# (results/b3_200k/qat/models/*.mbz and qat_e24/models/*.mbz, all from one pruned model), made here first with
#   python tools/soup.py results/b3_200k/qat/models/*.mbz results/b3_200k/qat_e24/models/*.mbz \
#       -o .devdata/b3_200k_soup4/soup4.mbz --no-zstd --data none
# carry: .devdata/cifar10_jpeg_{train,test}.npz, .devdata/baseline3.pt.sxz, .devdata/b3_200k_soup4, .whl
# command: bash results/b3_200k/soup4_gpu.sh   (two resumes side by side, about 4 minutes on one H100)
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl; export PYTHONPATH=/tmp/site
W=/tmp/b3_200k_soup4; mkdir -p $W
python3 tools/carry_xz.py unpack .devdata/baseline3.pt.sxz /tmp/baseline3.pt
D="--kd 0.5 --baseline /tmp/baseline3.pt --data npz:.devdata"
timeout 420 python3 tools/qat_resume.py .devdata/b3_200k_soup4/soup4.mbz --name soup4_e4_lr0.005 --epochs 4 --lr 0.005 \
    $D --out $W/e4 > $W/stdout_e4.txt 2>&1 &
timeout 420 python3 tools/qat_resume.py .devdata/b3_200k_soup4/soup4.mbz --name soup4_e8_lr0.005 --epochs 8 --lr 0.005 \
    $D --out $W/e8 > $W/stdout_e8.txt 2>&1 &
wait; tail -c 400 $W/stdout_e4.txt $W/stdout_e8.txt
cd /tmp && tar cf $OUT/b3_200k_soup4.tar b3_200k_soup4 && ls -la $OUT
# Then here: tools/repack.py for e4/ and e8/ into results/b3_200k/soup4/, then tools/reduce_params.py (8/8 bits).
