#!/bin/bash
# Each CPU path of load() under a memory limit, as a laptop with little memory would run it: a Linux cgroup (v1,
# the memory controller at /sys/fs/cgroup/memory; needs root), the page cache dropped before each try, one try per
# path and limit. Each try loads WEIGHTS (a float32 Kosmos-2 checkpoint, e.g. the random one bench/memory.py saves)
# and writes one 16-token caption; a line "OK load … caption …" means it did, no such line that it was stopped.
#
#   sudo bash bench/memory_limit.sh WEIGHTS [LIMIT_GIB …]        (default limits: 3 4.5)
#   sudo PATHS="4bit int4" bash bench/memory_limit.sh WEIGHTS 3     (only these paths)
#
# int4-onnx runs twice: building its graphs (into a fresh scratch cache) and reading them back; in PATHS they are
# int4-onnx-build and int4-onnx-read (the default: none 4bit int8 int4 int4-onnx-build int4-onnx-read).
set -u
WEIGHTS=${1:?usage: bench/memory_limit.sh WEIGHTS [LIMIT_GIB ...]}
shift
LIMITS=${*:-3 4.5}
ALL_PATHS="none 4bit int8 int4 int4-onnx-build int4-onnx-read"
PATHS=${PATHS:-$ALL_PATHS}
for path in $PATHS; do
  case " $ALL_PATHS " in *" $path "*) ;;
    *) echo "bench/memory_limit.sh: unknown path '$path' in PATHS ($ALL_PATHS)"; exit 2 ;;
  esac
done
ROOT=/sys/fs/cgroup/memory
PY=${PY:-.venv/bin/python}
[ -f "$WEIGHTS/config.json" ] || { echo "bench/memory_limit.sh: $WEIGHTS is not a checkpoint folder (no config.json)"; exit 2; }
[ -w "$ROOT" ] || { echo "bench/memory_limit.sh: cannot write to $ROOT (cgroup v1 and root needed)"; exit 2; }
CACHE=$(mktemp -d)  # (made once the checks passed: a refused run leaves nothing behind)
try() {  # try QUANTIZATION ONNX_CACHE [LIMIT_BYTES]: one load and caption in a new cgroup of that limit
  local cg=$ROOT/kosmos2-memory-limit-$$-$RANDOM
  mkdir "$cg" && echo "${3:--1}" > "$cg/memory.limit_in_bytes" || return
  KOSMOS2_ONNX_CACHE=$2 KOSMOS2_PROGRESS=0 HF_HUB_OFFLINE=1 bash -c "echo \$\$ > $cg/cgroup.procs; exec timeout 300 \
    $PY - '$WEIGHTS' '$1'" <<'PYTHON' 2>&1 | grep '^OK'
import sys, time
from PIL import Image
start = time.perf_counter()
from helpers.grounding.model import ground, load
model, processor = load(sys.argv[1], quantization=sys.argv[2], device="cpu", verbose=False)
loaded = time.perf_counter()
ground(model, processor, Image.new("RGB", (224, 224), "white"), max_new_tokens=16, progress=False)
print(f"OK load {loaded - start:.1f} s caption {time.perf_counter() - loaded:.1f} s")
PYTHON
  rmdir "$cg"
}
for limit in $LIMITS; do
  for path in $PATHS; do
    quantization=${path%-build}; quantization=${quantization%-read}; cache=off
    [ "$path" = int4-onnx-build ] && { rm -rf "$CACHE"; mkdir -p "$CACHE"; cache=$CACHE; }
    [ "$path" = int4-onnx-read ] && cache=$CACHE
    if [ "$path" = int4-onnx-read ] && [ -z "$(ls -A "$CACHE")" ]; then  # graphs to read, built without a limit
      try int4-onnx "$CACHE" > /dev/null
    fi
    sync; echo 3 > /proc/sys/vm/drop_caches
    echo "$limit GiB | $path | $(try "$quantization" "$cache" "$(python3 -c "print(int($limit * 2**30))")")"
  done
done
rm -rf "$CACHE"
