export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 FLASHCORE_CACHE=/tmp/fc
nvidia-smi --query-gpu=name --format=csv,noheader
s=$(date +%s)
FLASHCORE_DECODE_DEEP=1 python3 -m pytest tests/test_gpu_decode_plan.py tests/test_gpu_graph.py -q -x -p no:cacheprovider 2>&1 | tail -1
echo "tests at $(( $(date +%s)-s )) s"
mkdir -p $OUT/deep
for spec in "16,8,32768 32768,16384" "32,8,8192 8192,4096" "8,8,131072 65536,32768" "1,8,131072 8192,4096" "4,8,32768 8192,4096" "64,8,4096 4096,2048" "2,8,131072 16384,8192" "16,32,32768 32768,16384" "8,32,131072 131072,65536" "32,32,8192 8192,4096"; do
  set -- $spec
  python3 scripts/bench_decode_grid.py --config $1 --chunks auto,$2 --multipliers 3 --repeats 30 --variant FLASHCORE_DECODE_DEEP=1 --json $OUT/deep/deep_${1//,/_}.json 2>&1 | grep "^  B"
done
echo "done at $(( $(date +%s)-s )) s"
tar -czf $OUT/deep_ab.tgz -C $OUT deep && rm -rf $OUT/deep
