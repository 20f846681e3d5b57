#!/usr/bin/env bash
# The GPU check, run on the lent GPU machine from the repository root (see README, Devices).
# Expects in .gpu/: trio.xz (a `--features cuda` release build), gpupack.tar.xz (from
# lab/scripts/gpu_pack.py) and demo.trio.xz (a small trained demo catalogue). Writes JSON to $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT" /tmp/g
tar xJf .gpu/gpupack.tar.xz -C /tmp/g && xz -dc .gpu/trio.xz > /tmp/g/trio && chmod +x /tmp/g/trio
xz -dc .gpu/demo.trio.xz > /tmp/g/demo.trio
NV=$(python3 -c "import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], 'cu13', 'lib'))")
export LD_LIBRARY_PATH="$NV:${LD_LIBRARY_PATH:-}" TRIO_HOME=/tmp/g RUST_BACKTRACE=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
P=$(python3 -c "import skimage, os; print(os.path.join(os.path.dirname(skimage.__file__), 'data'))")
IMGS=(); for f in chelsea.png coffee.png rocket.jpg astronaut.png motorcycle_left.png; do IMGS+=(--image "$P/$f"); done
M=(--image-weights /tmp/g/gpupack/lite0.safetensors --text-model /tmp/g/gpupack/text)
B=(bench "${M[@]}" --texts-file /tmp/g/gpupack/texts.txt "${IMGS[@]}" --batch 1,8,32,128 --min-items 256 --min-seconds 3 --json)
/tmp/g/trio "${B[@]}" --device cuda --parity > "$OUT/bench_cuda.json" 2> "$OUT/bench_cuda.err"; echo "bench cuda rc=$?"
/tmp/g/trio "${B[@]}" --device cpu > "$OUT/bench_cpu.json" 2> "$OUT/bench_cpu.err"; echo "bench cpu rc=$?"
# The service on each device: text search and classify (text, then image) at 64 connections.
python3 -c "import json,base64; json.dump({'text':'smiling cat face','k':10}, open('/tmp/g/search.json','w')); json.dump({'title':'red heart','top_k':5}, open('/tmp/g/cls_text.json','w')); json.dump({'image':base64.b64encode(open('$P/chelsea.png','rb').read()).decode(),'top_k':5}, open('/tmp/g/cls_image.json','w'))"
for dev in cuda cpu; do
  /tmp/g/trio serve --db /tmp/g/demo.trio "${M[@]}" --device $dev --addr 127.0.0.1:8090 > "$OUT/serve_$dev.log" 2>&1 &
  pid=$!
  for i in $(seq 120); do curl -sf http://127.0.0.1:8090/healthz >/dev/null && break; sleep 0.5; done
  for r in search:search cls_text:classify cls_image:classify; do
    python3 lab/scripts/http_load.py "http://127.0.0.1:8090/v1/${r#*:}" "/tmp/g/${r%%:*}.json" 64 10 "$dev ${r%%:*}" | tee -a "$OUT/serve.jsonl"
  done
  grep VmHWM /proc/$pid/status | sed "s/^/$dev server /" | tee -a "$OUT/serve.jsonl"
  kill $pid; wait $pid 2>/dev/null
done
cat "$OUT"/bench_*.err | tail -20
