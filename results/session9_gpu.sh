# The GPU script of session 9 (results/b3_r60, b3_a4_dense, b3_200k), as run on two H200s through the device tool:
#   carry: .devdata/cifar10_jpeg_{train,test}.npz, .devdata/baseline3.pt.sxz (tools/carry_xz.py pack of baseline3's weights), .whl (msgpack)
#   command: bash .devdata/s9.sh   (three calls; the third ran a variant: lane 0 the 200 KB sweep alone, lane 1 the kd-0.7 a4 run)
# The device did not keep runs/s9 between calls, so each call started over (see results/README.md).
# Session 9 GPU work, resumable: every call re-runs this; finished stages are skipped (sweep caches, done runs).
# Lane 0 / lane 1 go to GPU 0 / 1 (both to GPU 0 on a one-GPU machine). State stays in runs/s9 on the device.
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl; export PYTHONPATH=/tmp/site
END=$((SECONDS + ${BUDGET:-555}))
left() { echo $((END - SECONDS)); }
tb() { local t=$(( $(left) - $1 )); [ $t -lt 1 ] && t=1; echo $t; }
mkdir -p runs/s9; B=runs/s9/baseline3.pt
[ -f $B ] || python3 tools/carry_xz.py unpack .devdata/baseline3.pt.sxz $B
NG=$(nvidia-smi -L | wc -l); nvidia-smi -L
D="--baseline $B --data npz:.devdata"
soup_resume() {  # $1 = sweep folder, $2 = lr: soup of its QAT runs, then 4 QAT epochs from the soup
  local R=$1
  [ "$(ls $R/models/*.mbz 2>/dev/null | wc -l)" = 2 ] || return 0
  [ -f $R/soup/soup.mbz ] || python3 tools/soup.py $R/models/*.mbz -o $R/soup/soup.mbz --no-zstd --data none
  [ -f $R/soup/soup_e4_lr$2.mbz ] || [ $(left) -lt 150 ] || timeout $(left) python3 tools/qat_resume.py $R/soup/soup.mbz \
      --name soup_e4_lr$2 --epochs 4 --lr $2 --kd 0.5 $D --out $R/soup
}
lane0() {
  export CUDA_VISIBLE_DEVICES=0
  (timeout $(left) python3 tools/sweep.py run sweeps/mnv2_b3_a4_dense.yaml --out runs/s9/a4_dense $D --where kd=0.5 \
      --time-budget $(tb 400) > runs/s9/a4_dense.txt 2>&1; echo a4_dense rc $?) &
  timeout $(left) python3 tools/sweep.py run sweeps/mnv2_b3_200k.yaml --out runs/s9/b3_200k $D --prune-epochs 6 \
      --prune-final-epochs 36 --prune-restart 60 --caps results/sensitivity/caps.json --jobs 2 --time-budget $(tb 250) \
      > runs/s9/b3_200k.txt 2>&1; echo b3_200k rc $?
  soup_resume runs/s9/b3_200k 0.005 >> runs/s9/b3_200k.txt 2>&1
  wait
}
lane1() {
  export CUDA_VISIBLE_DEVICES=$((1 % NG))
  timeout $(left) python3 tools/sweep.py run sweeps/mnv2_b3_400k_restart.yaml --out runs/s9/b3_400k_r60 $D \
      --prune-epochs 8 --prune-restart 60 --jobs 2 --time-budget $(tb 250) > runs/s9/b3_400k_r60.txt 2>&1; echo b3_400k rc $?
  soup_resume runs/s9/b3_400k_r60 0.005 >> runs/s9/b3_400k_r60.txt 2>&1
  [ $(left) -gt 330 ] && { timeout $(left) python3 tools/sweep.py run sweeps/mnv2_b3_a4_dense.yaml --out runs/s9/a4_dense_kd07 \
      $D --where kd=0.7 --time-budget $(tb 330) > runs/s9/a4_dense_kd07.txt 2>&1; echo a4_kd07 rc $?; }
}
lane0 & lane1 & wait
tail -n 4 runs/s9/*.txt | cut -c1-300
cd runs && tar cf $OUT/s9.tar --exclude='decoded_*.pt' --exclude=baseline3.pt s9 && ls -la $OUT
