#!/bin/bash
# On the GPU box: JIT build, the GPU test suite, compute-sanitizer over a small grid, the kernel
# benchmarks, and an A/B of the seed points against a git revision, with logs and results under
# $OUT (one device call; each step alone fits the 10-minute limit, all four may not).
#   bash tools/box_gpu_check.sh [tests|sanitize|bench|headdim|padded|ab|ab_fp8|coverage|checks|serving|tp ...]
#   (default: tests sanitize bench ab)
# coverage, checks, serving and tp run through tools/box_serving.sh (carry .carry/boxsite.tar.xz
# and .carry/baselines.tar.xz). coverage: the benchmarks of FP8 KV (decode, extend), target verify
# and sliding windows against SGLang's fa3/flashinfer kernels. checks: greedy ids (or embeddings)
# against triton's for a Gemma-3-shaped model (windows, head dim 256), a Phi-3-shaped one (head dim
# 96), an embedding model, an FP8 KV cache and EAGLE3. serving: the serving workloads against fa3
# and flashinfer. tp: the same at tensor parallelism over all the box's GPUs (a multi-GPU kind).
# headdim: head dim 256 (Gemma 2/3-shaped heads), padded: head dim 96 (Phi-3, which runs in the 128
# kernels), each in bench_dense.py and bench_decode.py (head_dim_benches).
# ab: bench_dense.py and bench_decode.py at their seed points, this tree against $AB_BASE (default
# 94de7b1), the runs alternating; it needs the revision packed first where git is
# (python tools/ab_revision.py pack --base 94de7b1, then carry .carry), unless git works here.
# ab_fp8: FP8 KV decode and extend, this tree against $AB_BASE (packed the same way).
set -uo pipefail
FINAL=${OUT:-/tmp/out}
# everything goes to one folder, packed into $OUT/results.tgz at the end (the device tool returns
# at most 8 files)
mkdir -p "$FINAL"
OUT=$(mktemp -d)
export FLASHCORE_CACHE=${FLASHCORE_CACHE:-/tmp/fc} PYTHONPATH=$PWD
AB_BASE=${AB_BASE:-94de7b1} AB_RUNS=${AB_RUNS:-2}
steps=${*:-tests sanitize bench ab}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/device.txt"
start=$(date +%s)
python3 -c "from sglang_flashcore import _jit; _jit.load()" 2>&1 | tail -3
echo "build: $(( $(date +%s) - start )) s"
# A head dim's benchmarks: bench_dense.py (against cuDNN and FA2) over DENSE_SHAPES and
# bench_decode.py (against cuDNN, and the serving baselines where carried) over DECODE_CONFIGS with
# HKV KV heads, into $OUT/dense_NAME.* and $OUT/decode_NAME.*.
#   head_dim_benches NAME DENSE_SHAPES DECODE_CONFIGS HKV
head_dim_benches() {
  local name=$1 serve=""
  [ -f .carry/boxsite.tar.xz ] && serve="bash tools/box_serving.sh"
  $serve python3 benchmarks/bench_dense.py $2 --dtype bf16 --json "$OUT/dense_$name.json" \
    --plot "$OUT/dense_$name.png" > "$OUT/dense_$name.txt" 2>&1
  echo "dense $name rc=$?"; tail -10 "$OUT/dense_$name.txt" | cut -c1-220
  $serve python3 benchmarks/bench_decode.py $3 --hkv "$4" --repeats 20 --rounds 3 --json "$OUT/decode_$name.json" \
    --plot "$OUT/decode_$name.png" > "$OUT/decode_$name.txt" 2>&1
  echo "decode $name rc=$?"; grep -E "^  B|unavailable|mismatch" "$OUT/decode_$name.txt" | cut -c1-300
}
for step in $steps; do
  case $step in
    tests)
      # one pytest process per GPU test file, side by side (correctness only: nothing here is timed)
      pids=()
      for f in tests/test_gpu_*.py; do
        [ "$f" = tests/test_gpu_sglang_kit.py ] && continue
        name=$(basename "$f" .py)
        timeout "${TESTS_TIMEOUT:-400}" python3 -m pytest "$f" -m gpu -q --maxfail=20 -p no:cacheprovider \
          > "$OUT/$name.txt" 2>&1 &
        pids+=($!)
      done
      rc=0; for p in "${pids[@]}"; do wait "$p" || rc=1; done
      echo "gpu tests rc=$rc"
      for f in "$OUT"/test_gpu_*.txt; do echo "$(basename "$f" .txt): $(tail -1 "$f")"; done
      grep -h "^FAILED" "$OUT"/test_gpu_*.txt | head -20 ;;
    sanitize)
      # SANITIZE_RACECHECK_GROUPS: the case groups racecheck runs (all of them outlast a call)
      for tool in memcheck racecheck; do
        groups=""; [ $tool = racecheck ] && groups=${SANITIZE_RACECHECK_GROUPS:-}
        timeout "${SANITIZE_TIMEOUT:-300}" compute-sanitizer --tool $tool --error-exitcode 9 python3 tools/sanitize_cases.py $groups \
          > "$OUT/sanitize_$tool.txt" 2>&1
        echo "sanitizer $tool rc=$?"; tail -2 "$OUT/sanitize_$tool.txt"
      done ;;
    bench)
      python3 benchmarks/bench_decode.py --graph --json "$OUT/decode_seed.json" --plot "$OUT/decode_seed.png" > "$OUT/decode_seed.txt" 2>&1
      echo "decode rc=$?"; tail -14 "$OUT/decode_seed.txt"
      python3 benchmarks/bench_decode.py --config 8,32,32768,128,1,0.5 --config 8,32,32768,128,16,0.5 \
        --config 8,32,32768,128,128,0.5 --json "$OUT/decode_pages.json" --plot "$OUT/decode_pages.png" \
        > "$OUT/decode_pages.txt" 2>&1
      echo "decode pages rc=$?"; tail -13 "$OUT/decode_pages.txt" | cut -c1-140
      python3 benchmarks/bench_dense.py --shape 16,2048,16,16,64 --json "$OUT/dense_seed.json" > "$OUT/dense_seed.txt" 2>&1
      echo "dense seed rc=$?"; tail -6 "$OUT/dense_seed.txt" | cut -c1-200
      python3 benchmarks/bench_extend.py --json "$OUT/extend.json" --plot "$OUT/extend.png" > "$OUT/extend.txt" 2>&1
      echo "extend rc=$?"; tail -26 "$OUT/extend.txt" | cut -c1-200 ;;
    headdim)
      shapes=""; for sl in 1024 4096 16384; do shapes="$shapes --shape $((16384 / sl)),$sl,8,8,256"; done
      head_dim_benches d256 "$shapes --shape 4,4096,16,8,256" "--config 16,8,32768,256,64,0.7 --config 64,8,4096,256,64,0" 4 ;;
    padded)
      # Phi-3-shaped heads (32 x 96, MHA), served by the 128 kernels padded; with the baselines
      # carried, decode also against FlashInfer, the backend such models were routed to before
      head_dim_benches d96 "--shape 4,4096,32,32,96 --shape 16,1024,32,32,96" \
        "--config 16,32,16384,96,64,0.7 --config 64,32,4096,96,64,0" 32 ;;
    coverage)
      serve="bash tools/box_serving.sh python3"
      $serve benchmarks/bench_decode.py --config 16,32,32768,128,128,0.7 --config 8,32,131072,128,128,0.7 --hkv 8 \
        --kv-dtype fp8_e4m3 --deterministic --repeats 10 --rounds 3 --json "$OUT/decode_fp8.json" \
        --plot "$OUT/decode_fp8.png" > "$OUT/decode_fp8.txt" 2>&1
      echo "decode fp8 rc=$?"; grep -E "^  B|unavailable" "$OUT/decode_fp8.txt" | cut -c1-300
      $serve benchmarks/bench_extend.py --kv-dtype fp8_e4m3 --lengths 4096 --batches 8 --fractions 0,0.9 \
        --json "$OUT/extend_fp8.json" > "$OUT/extend_fp8.txt" 2>&1
      echo "extend fp8 rc=$?"; grep -E "^  page|unavailable" "$OUT/extend_fp8.txt" | cut -c1-300
      $serve benchmarks/bench_verify.py --json "$OUT/verify.json" --plot "$OUT/verify.png" > "$OUT/verify.txt" 2>&1
      echo "verify rc=$?"; grep -E "^  page|unavailable" "$OUT/verify.txt" | cut -c1-300
      $serve benchmarks/bench_window.py --json "$OUT/window.json" --plot "$OUT/window.png" > "$OUT/window.txt" 2>&1
      echo "window rc=$?"; grep -E "^  (prefill|decode)|unavailable" "$OUT/window.txt" | cut -c1-300 ;;
    checks)
      serve="bash tools/box_serving.sh python3"; mkdir -p "$OUT/checks"
      check="benchmarks/bench_serving.py --backends flashcore_sparse,triton --check --workloads= --log-dir $OUT/checks"
      $serve $check --config tiny_gemma3_swa --json "$OUT/check_gemma3.json" > "$OUT/check_gemma3.txt" 2>&1
      echo "gemma3 (windows) rc=$?"; grep -E "identical|FAILED" "$OUT/check_gemma3.txt" | tail -3
      $serve $check --config tiny_phi3 --json "$OUT/check_phi3.json" > "$OUT/check_phi3.txt" 2>&1
      echo "phi3 (head dim 96) rc=$?"; grep -E "identical|FAILED" "$OUT/check_phi3.txt" | tail -3
      $serve benchmarks/check_embeddings.py --log-dir "$OUT/checks" --json "$OUT/check_embeddings.json" \
        > "$OUT/check_embeddings.txt" 2>&1
      echo "embeddings rc=$?"; tail -2 "$OUT/check_embeddings.txt"
      $serve $check --server-arg=--kv-cache-dtype --server-arg=fp8_e4m3 --json "$OUT/check_fp8.json" \
        > "$OUT/check_fp8.txt" 2>&1
      echo "fp8 kv rc=$?"; grep -E "identical|FAILED" "$OUT/check_fp8.txt" | tail -3
      draft=$PWD/configs/tiny_llama_eagle3
      $serve $check --config tiny_llama --server-arg=--speculative-algorithm --server-arg=EAGLE3 \
        --server-arg=--speculative-draft-model-path --server-arg="$draft" \
        --server-arg=--speculative-draft-load-format --server-arg=dummy \
        --server-arg=--speculative-draft-attention-backend --server-arg=triton \
        --server-arg=--speculative-num-steps --server-arg=3 --server-arg=--speculative-eagle-topk --server-arg=1 \
        --server-arg=--speculative-num-draft-tokens --server-arg=4 --json "$OUT/check_eagle3.json" \
        > "$OUT/check_eagle3.txt" 2>&1
      echo "eagle3 rc=$?"; grep -E "identical|FAILED" "$OUT/check_eagle3.txt" | tail -3 ;;
    serving)
      bash tools/box_serving.sh python3 benchmarks/bench_serving.py --backends flashcore_sparse,fa3,flashinfer \
        --check --check-new-tokens 16 --workloads shared,random --shared-requests 64 --random-requests 64 \
        --warmup-requests 8 --log-dir "$OUT" --json "$OUT/serving_baselines.json" \
        --plot "$OUT/serving_baselines.png" > "$OUT/serving.txt" 2>&1
      echo "serving rc=$?"; tail -20 "$OUT/serving.txt" | cut -c1-220 ;;
    tp)
      # tensor parallelism over every GPU of the box (a multi-GPU kind): the Llama-3-70B shape with
      # dummy weights (141 GB: two H200s or four H100s). A 70B server takes minutes to start, so
      # one call serves TP_BACKENDS (default: ours and triton, greedy ids compared); a second call
      # with TP_BACKENDS=flashcore_sparse,fa3,flashinfer gives the built-ins users run
      gpus=$(nvidia-smi -L | wc -l); backends=${TP_BACKENDS:-flashcore_sparse,triton}
      check=""; [[ $backends == *triton* ]] && check="--check --check-new-tokens 16"
      bash tools/box_serving.sh python3 benchmarks/bench_serving.py --config llama3_70b --backends "$backends" \
        --server-arg=--tp --server-arg="$gpus" $check --workloads shared,random --shared-requests 64 \
        --random-requests 64 --warmup-requests 8 --log-dir "$OUT" --json "$OUT/serving_tp$gpus.json" \
        --plot "$OUT/serving_tp$gpus.png" > "$OUT/serving_tp.txt" 2>&1
      echo "tp $gpus ($backends) rc=$?"; tail -20 "$OUT/serving_tp.txt" | cut -c1-220 ;;
    ab)
      python3 tools/ab_revision.py seeds --base "$AB_BASE" --runs "$AB_RUNS" --out "$OUT" > "$OUT/ab.txt" 2>&1
      echo "ab vs $AB_BASE rc=$?"; grep -E "^base:|this / base|failed" "$OUT/ab.txt" ;;
    ab_fp8)
      # FP8 KV against $AB_BASE: decode at the decode_fp8 points (our FP8 time), extend at the
      # extend_fp8 points (the backend's FP8 time)
      python3 tools/ab_revision.py run --base "$AB_BASE" --runs "$AB_RUNS" --script bench_decode.py \
        --key B,Hq,Hkv,ctx,D,page,shared --metric ours_fp8_ms --lower-is-better --baseline fp8_over_bf16 \
        --json "$OUT/ab_fp8_decode.json" -- --config 16,32,32768,128,128,0.7 --config 8,32,131072,128,128,0.7 \
        --hkv 8 --kv-dtype fp8_e4m3 --repeats 10 --rounds 3 > "$OUT/ab_fp8_decode.txt" 2>&1
      echo "ab_fp8 decode vs $AB_BASE rc=$?"; grep -E "^base:|this / base|failed" "$OUT/ab_fp8_decode.txt"
      python3 tools/ab_revision.py run --base "$AB_BASE" --runs "$AB_RUNS" --script bench_extend.py \
        --key page,B,L,prefix,new,Hq,Hkv,D --metric backend_fp8_ms --lower-is-better --baseline fp8_over_bf16 \
        --json "$OUT/ab_fp8_extend.json" -- --kv-dtype fp8_e4m3 --lengths 4096 --batches 8 --fractions 0,0.9 \
        > "$OUT/ab_fp8_extend.txt" 2>&1
      echo "ab_fp8 extend vs $AB_BASE rc=$?"; grep -E "^base:|this / base|failed" "$OUT/ab_fp8_extend.txt" ;;
    *)
      echo "unknown step $step (tests, sanitize, bench, headdim, padded, ab, ab_fp8, coverage, checks, serving, tp)" ;;
  esac
  echo "[$step done at $(( $(date +%s) - start )) s]"
  tar -czf "$FINAL/results.tgz" -C "$OUT" .  # after every step: a call cut at its limit still returns the steps done
done
echo "results: $FINAL/results.tgz ($(ls "$OUT" | wc -l) files)"
