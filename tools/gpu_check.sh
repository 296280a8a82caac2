#!/usr/bin/env bash
# The prepared GPU check (issue 16): on a machine with an NVIDIA GPU, in under 8 minutes, writes
#   OUTDIR/gpu_check.log   everything printed
#   OUTDIR/results.json    each step's status and time, the CUDA tests' counts, every benchmark figure
#   OUTDIR/gui_cuda.png    the window after a step on a random 1B Llama on CUDA (only where PySide6 is there)
#   OUTDIR/multi_device.json  placement and step times of a model over cuda:0 + CPU (and two GPUs, where present)
#
#   bash tools/gpu_check.sh OUTDIR                  # on the GPU machine
#   bash tools/gpu_check.sh OUTDIR --device cpu     # dry run: the same steps on the CPU, tiny shapes
#   (or GPU_CHECK_DEVICE=cpu; GPU_CHECK_BUDGET_S=seconds overrides the wall-clock budget, PYTHON the interpreter)
#
# Needs only Python 3.12 with torch, transformers, tokenizers, safetensors, jinja2, numpy and pytest: it runs from
# the tree (PYTHONPATH), installs nothing from the network, and skips the GUI cleanly when PySide6 is missing.
# PySide6-Essentials / shiboken6 / pyqtgraph wheels found in .whl/ (or wheels/, or $GPU_CHECK_WHEELS) are installed
# into a temporary folder first (--no-index --no-deps); docs/gpu.md says how to make them.
# Each step has its own time limit, cut to what is left of the budget, so one failure or hang never sinks the rest.
set -u

OUT="${1:?usage: tools/gpu_check.sh OUTDIR [--device cpu|cuda]}"
shift
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE="$2"; shift 2 ;;
        --device=*) DEVICE="${1#--device=}"; shift ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
LOG="$OUT/gpu_check.log"
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1
TEE_PID=$!
cd "$ROOT" || exit 2

PY="${PYTHON:-python3}"
if [ "$DEVICE" = cpu ]; then BUDGET="${GPU_CHECK_BUDGET_S:-1500}"; else BUDGET="${GPU_CHECK_BUDGET_S:-450}"; fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 QT_QPA_PLATFORM=offscreen TOKENIZERS_PARALLELISM=false
START=$(date +%s)
STEPS="$WORK/steps.tsv"
: >"$STEPS"

# step NAME LIMIT_S COMMAND...: run it under `timeout`, cut to the budget left, and record status and seconds
step() {
    local name="$1" limit="$2"
    shift 2
    local left=$((BUDGET - ($(date +%s) - START) - 15))
    if [ "$left" -lt 20 ]; then
        echo "== $name: skipped, ${left}s of the ${BUDGET}s budget left"
        printf '%s\t%s\t%s\t%s\n' "$name" skipped 0 "no time left" >>"$STEPS"
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (limit ${limit}s) $(date -u +%H:%M:%S)"
    local t0=$(date +%s) rc
    timeout -k 10 "$limit" "$@"
    rc=$?
    local dt=$(($(date +%s) - t0)) status=ok
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && status=timeout
    [ $rc -ne 0 ] && [ "$status" = ok ] && status=failed
    echo "== $name: $status (exit $rc) in ${dt}s"
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$dt" "$rc" >>"$STEPS"
    return 0
}

echo "gpu_check: device $DEVICE, budget ${BUDGET}s, tree $ROOT, work $WORK, $(date -u +%FT%TZ)"
if [ "$DEVICE" != cpu ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv 2>&1 || echo "nvidia-smi not available"
fi
git -C "$ROOT" rev-parse HEAD 2>/dev/null >"$WORK/commit" || echo unknown >"$WORK/commit"

# 1. carried GUI wheels (optional)
WHEELS="${GPU_CHECK_WHEELS:-}"
for d in .whl wheels; do [ -z "$WHEELS" ] && ls "$ROOT/$d"/*.whl >/dev/null 2>&1 && WHEELS="$ROOT/$d"; done
if [ -n "$WHEELS" ]; then
    # only the GUI's own packages (and accelerate, for the transformers backend over several devices): the machine's
    # numpy / torch stay as they are
    mapfile -t GUI_WHEELS < <(ls "$WHEELS"/*.whl | grep -iE '/(pyside6_essentials|pyside6-essentials|shiboken6|pyqtgraph|pyzmq|accelerate|psutil)-')
    if [ ${#GUI_WHEELS[@]} -gt 0 ]; then
        step wheels 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" "${GUI_WHEELS[@]}"
        export PYTHONPATH="$PYTHONPATH:$WORK/site"
    fi
fi

# 2. the engine imports on a bare machine, and never pulls in Qt
step imports 120 "$PY" - "$DEVICE" <<'EOF'
import importlib, sys
import engine, engine.checkpoints, engine.chat, engine.export, engine.session_file  # noqa: F401
from engine import Session, load_model  # noqa: F401
assert not any(m.split(".")[0] in ("PySide6", "pyqtgraph", "gui") for m in sys.modules), "the engine imported Qt or gui"
import torch
for name in ("numpy", "tokenizers", "safetensors", "jinja2", "huggingface_hub", "transformers", "pytest"):
    m = importlib.import_module(name)
    print(f"{name} {getattr(m, '__version__', '?')}")
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, cuda available {torch.cuda.is_available()}")
if sys.argv[1] != "cpu":
    assert torch.cuda.is_available(), "torch sees no CUDA GPU"
    print(torch.cuda.get_device_name(0), f"{torch.cuda.get_device_properties(0).total_memory / 1e9:.0f} GB")
try:
    import PySide6, pyqtgraph  # noqa: F401, E401
    print(f"PySide6 {PySide6.__version__}, pyqtgraph {pyqtgraph.__version__}: the GUI part runs")
except ImportError as exc:
    print(f"no GUI part ({exc})")
EOF

# 3. the CUDA tests (on the CPU they are all skipped: that checks they collect and skip cleanly)
step pytest 200 "$PY" -m pytest -m cuda tests/cuda -q -p no:cacheprovider -o addopts="-ra" --junitxml="$WORK/junit.xml"

# 4. the benchmarks, in two processes (the 8B shape alone first: it needs the whole device)
step bench_8b 240 "$PY" tools/bench_cuda.py --device "$DEVICE" --items bandwidth,llama8b --json "$WORK/bench_8b.json"
step bench_1b_gpt2 150 "$PY" tools/bench_cuda.py --device "$DEVICE" --items llama1b,gpt2 --json "$WORK/bench_1b_gpt2.json"

# 4b. a model over several devices (issue 27): its placement and step time on cuda:0, half offloaded to the CPU,
# over two GPUs where there are two, and as device="auto" places it (the CUDA tests above check the numbers)
step multi_device 150 "$PY" tools/bench_multi_device.py --device "$DEVICE" --tokens 128 --steps 8 --json "$OUT/multi_device.json"

# 5. the GUI on CUDA: a random 1B Llama folder, one step, a screenshot (only where PySide6 imports)
if "$PY" -c "import PySide6.QtWidgets, pyqtgraph" >/dev/null 2>&1; then
    step gui_checkpoint 90 "$PY" tools/bench_cuda.py --device "$DEVICE" --save llama1b "$WORK/llama1b"
    step gui_screenshot 120 "$PY" main.py --model "$WORK/llama1b" --prompt "t1 t2 t3 t4" --steps 1 --screenshot "$OUT/gui_cuda.png"
else
    echo "== gui: skipped (PySide6 / pyqtgraph do not import here; see docs/gpu.md)"
    printf '%s\t%s\t%s\t%s\n' gui skipped 0 "PySide6 or pyqtgraph missing" >>"$STEPS"
fi

# 5b. the remote engine (issue 27): a server on this device, a client beside it; needs pyzmq (carry its wheel)
if "$PY" -c "import zmq" >/dev/null 2>&1; then
    step remote 150 "$PY" tools/bench_remote.py --device "$DEVICE" --lengths 1024,8192 --steps 6 --rounds 2 --json-out "$OUT/remote.json"
    # bytes a whole 1B Llama's trace sends mirrored vs with its patterns kept on the server (the prefill: 1.3 GB vs
    # ~0.2 MB at 8k tokens; on a CPU only two of its layers are measured, see docs/remote-engine.md)
    step remote_bytes 240 "$PY" tools/bench_remote.py --bytes --shape 1b --device "$DEVICE" --lengths 1024,8192 --steps 3 --json-out "$OUT/remote_bytes.json"
else
    echo "== remote: skipped (pyzmq does not import here; put its wheel in .whl/)"
    printf '%s\t%s\t%s\t%s\n' remote skipped 0 "pyzmq missing" >>"$STEPS"
fi

# 6. one JSON of everything, and the table last
"$PY" - "$WORK" "$OUT/results.json" "$DEVICE" "$BUDGET" "$START" <<'EOF'
import json, sys, time, xml.etree.ElementTree as ET
from pathlib import Path
work, out, device, budget, start = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
steps = [dict(zip(("name", "status", "seconds", "detail"), line.split("\t"))) for line in (work / "steps.tsv").read_text().splitlines()]
res = {"device": device, "commit": (work / "commit").read_text().strip(), "budget_s": budget,
       "wall_s": int(time.time()) - start, "steps": steps, "bench": {}}
if (work / "junit.xml").exists():
    suite = ET.parse(work / "junit.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    res["pytest"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    res["pytest"]["failed_tests"] = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
                                     if c.find("failure") is not None or c.find("error") is not None]
for f in sorted(work.glob("bench_*.json")):
    data = json.loads(f.read_text())
    res["bench"].setdefault("meta", {})[f.stem] = data["meta"]
    res["bench"].update(data["results"])
out.write_text(json.dumps(res, indent=1))
print("\n== summary")
for s in steps:
    print(f"  {s['name']:16s} {s['status']:8s} {s['seconds']:>4s}s")
if "pytest" in res:
    p = res["pytest"]
    print(f"  pytest -m cuda: {p['tests']} tests, {p['failures']} failures, {p['errors']} errors, {p['skipped']} skipped")
try:
    sys.path.insert(0, ".")
    from tools.bench_cuda import summary
    print(summary(res["bench"]))
except Exception as exc:  # e.g. no torch: the steps above say why
    print(f"  no benchmark summary ({type(exc).__name__}: {exc})")
print(f"wall {res['wall_s']}s of {budget}s; results in {out}")
EOF
rm -rf "$WORK"
exec >&- 2>&-
wait "$TEE_PID" 2>/dev/null
exit 0
