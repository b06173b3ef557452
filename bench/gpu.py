"""Every GPU figure of gptdraw in one command, each part under its own time cap.

    python bench/gpu.py                 # one H100/H200: about 6 minutes, from a bare machine
    python bench/gpu.py --dry-run       # the same parts, tiny sizes, on a CPU: about a minute

A GPU is lent rarely and briefly, so the measurement is prepared, not improvised: each part is
one of the benches beside this file, run as its own process with its own time cap (a part that
hangs or crashes is killed and recorded; the others still run), and the whole run has a budget:
a part that no longer fits in what is left is skipped. Parts run in order of how much their
figures are wanted:

  ceilings        the card as found: measured bf16 matmul FLOP/s and copy bytes/s, versions
  train           bench/train.py: gpt-draw at the reference layout (64 + 256 = 320 tokens, GPT-2's
                  vocabulary + 16,384 codes), micro-batch 16, bf16, eager, as the recipe trains
                  (gradient accumulation, losses read back every 10 steps): tokens/s, MFU, peak memory
                  (torch.cuda.max_memory_allocated), beside GPT2LMHeadModel in fp32 and bf16 autocast
  train-compile   the same compiled (the default on a GPU), with a profile of the compiled step
                  (device-busy share, top kernels)
  draw            bench/generate.py --compile: 16 prompts × 256 codes with CFG, compiled (CUDA graphs)
                  and not, with the taming f16-16384 decode, beside GPT2LMHeadModel.generate; also
                  whether the compiled step draws the eager step's codes
  encode          bench/vqgan.py: 256 px images → f16-16384 codes in bf16 (autocast, channels-last)
  checks          bench/correctness.py: bf16 losses against fp32, stop-and-resume
  launch          bench/correctness.py: `accelerate launch` on the one GPU, plainly and with FSDP2
  train-large     bench/train.py compiled at micro-batch 64: how MFU grows with work per launch
  train-graphs    compiled with mode="reduce-overhead": the step replayed as CUDA graphs
  (checks also runs "sync": no step waits for the device, under torch.cuda.set_sync_debug_mode)
  encode-compile  bench/vqgan.py with torch.compile
  draw-fp32       the compiled-against-eager drawing check in fp32, where no rounding can differ

The dry run keeps every part and its code path, with tiny sizes and, for torch.compile, the
aot_eager backend (dynamo and AOTAutograd trace the same graphs; no code is generated), so
that the suite is known to run before a GPU is ever lent (tests/test_bench_gpu.py runs it).

Writes OUT/gpu.json (each part's status, seconds, command and figures), OUT/gpu.md (the
table, also printed last) and OUT/<part>.log (each part's output).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


@dataclass
class Part:
    """One measured thing: a bench script run as its own process."""

    name: str
    cap_s: float
    """Seconds the part may run before it is killed."""
    script: str
    """The bench script beside this file."""
    args: list[str] = field(default_factory=list)
    """Its arguments, less the JSON path (`--out`), which the suite adds."""


# Reference layout: 64 caption tokens (GPT-2's 50,257 + a pad id) + 16×16 codes of 16,384.
REFERENCE = ["--text-len", "64", "--text-vocab", "50258", "--grid", "16", "--codebook", "16384"]
TINY = ["--text-len", "8", "--text-vocab", "300", "--grid", "4", "--codebook", "256"]


def full_parts() -> list[Part]:
    # As the recipe trains: accumulation, losses read every 10 steps, a warm-up of whole log intervals.
    train = ["--preset", "gpt-draw", "--micro-batch", "16", "--grad-accum", "4", "--log-every", "10",
             "--precision", "bf16", *REFERENCE]
    return [
        Part("ceilings", 60, "ceilings.py"),
        Part("train", 150, "train.py", [*train, "--steps", "20", "--warmup", "10", "--profile", "3"]),
        Part("train-compile", 240, "train.py", [*train, "--steps", "30", "--warmup", "10", "--compile", "--skip-baseline",
                                                "--profile", "3"]),
        Part("draw", 240, "generate.py", ["--preset", "gpt-draw", "--batch", "16", *REFERENCE, "--vq", "taming",
                                          "--cfg-scale", "3", "--compile", "--warmup", "1", "--repeats", "3"]),
        Part("encode", 120, "vqgan.py", ["--image-size", "256", "--batch-sizes", "64,256", "--variants", "bf16,bf16+cl",
                                         "--warmup", "1", "--repeats", "3"]),
        Part("checks", 150, "correctness.py", ["precision", "resume", "sync", "--preset", "gpt-draw", "--steps", "20"]),
        Part("launch", 120, "correctness.py", ["launch", "--preset", "gpt-draw", "--steps", "4"]),
        Part("train-large", 180, "train.py", ["--preset", "gpt-draw", "--micro-batch", "64", "--log-every", "10",
                                              "--precision", "bf16", *REFERENCE, "--steps", "20", "--warmup", "10",
                                              "--compile", "--skip-baseline"]),
        Part("train-graphs", 240, "train.py", [*train, "--steps", "30", "--warmup", "10", "--compile",
                                               "--compile-mode", "reduce-overhead", "--skip-baseline"]),
        Part("encode-compile", 180, "vqgan.py", ["--image-size", "256", "--batch-sizes", "256",
                                                 "--variants", "bf16+cl+compile", "--warmup", "1", "--repeats", "3"]),
        Part("draw-fp32", 150, "generate.py", ["--preset", "gpt-draw", "--batch", "16", *REFERENCE, "--vq", "none",
                                               "--precision", "fp32", "--compile", "--no-baseline", "--warmup", "0",
                                               "--repeats", "1"]),
    ]


def dry_parts() -> list[Part]:
    """The same parts at sizes a CPU runs in seconds; compiled parts trace with aot_eager."""
    train = ["--preset", "tiny", "--micro-batch", "4", *TINY]
    draw = ["--preset", "tiny", "--batch", "2", *TINY, "--compile-backend", "aot_eager", "--threads", "1"]
    return [
        Part("ceilings", 60, "ceilings.py", ["--size", "256", "--copy-mib", "16", "--repeats", "2"]),
        Part("train", 90, "train.py", [*train, "--steps", "2", "--warmup", "1", "--profile", "1"]),
        Part("train-compile", 120, "train.py", [*train, "--steps", "2", "--warmup", "1", "--compile",
                                                "--compile-backend", "aot_eager", "--skip-baseline", "--profile", "1"]),
        Part("draw", 90, "generate.py", [*draw, "--vq", "small", "--compile", "--warmup", "0", "--repeats", "1"]),
        Part("encode", 60, "vqgan.py", ["--image-size", "32", "--batch-sizes", "2", "--variants", "bf16,bf16+cl",
                                        "--repeats", "1"]),
        Part("checks", 120, "correctness.py", ["precision", "resume", "sync", "--preset", "tiny", "--steps", "4",
                                               "--micro-batch", "8", "--examples", "64"]),
        Part("launch", 120, "correctness.py", ["launch", "--preset", "tiny", "--steps", "4", "--micro-batch", "8",
                                               "--examples", "64"]),
        Part("train-large", 60, "train.py", [*train, "--micro-batch", "8", "--log-every", "2", "--steps", "2",
                                             "--warmup", "2", "--skip-baseline"]),
        Part("train-graphs", 120, "train.py", [*train, "--steps", "2", "--warmup", "1", "--compile",
                                               "--compile-backend", "aot_eager", "--skip-baseline"]),
        Part("encode-compile", 90, "vqgan.py", ["--image-size", "32", "--batch-sizes", "2", "--variants",
                                                "bf16+cl+compile", "--repeats", "1", "--compile-backend", "aot_eager"]),
        Part("draw-fp32", 90, "generate.py", [*draw, "--vq", "none", "--precision", "fp32", "--compile",
                                              "--no-baseline", "--warmup", "0", "--repeats", "1"]),
    ]


def run_part(part: Part, out_dir: Path, cap_s: float, threads: int | None = None) -> dict:
    """Runs one part as its own process group (compile workers and launched processes included),
    killed whole at `cap_s`. Returns its record: status, seconds, command and figures.
    threads: CPU threads for torch in the part (default: torch's choice)."""
    result_path = out_dir / f"{part.name}.json"
    result_path.unlink(missing_ok=True)
    command = [sys.executable, str(HERE / part.script), *part.args, "--out", str(result_path)]
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if threads:
        environment["OMP_NUM_THREADS"] = str(threads)
    started = time.perf_counter()
    with open(out_dir / f"{part.name}.log", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=environment,
                                   start_new_session=True)
        try:
            returncode = process.wait(timeout=cap_s)
            status = "ok" if returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            returncode, status = None, "timeout"
    shown = [os.path.relpath(part, ROOT) if os.path.isabs(part) else part for part in command[1:]]
    record = {"status": status, "returncode": returncode, "seconds": round(time.perf_counter() - started, 1),
              "cap_s": cap_s, "command": "python " + " ".join(shown)}
    if result_path.exists():  # a part stopped at its cap may have written what it measured so far
        record["result"] = json.loads(result_path.read_text())
    if status != "ok":
        record["log_tail"] = (out_dir / f"{part.name}.log").read_text()[-3000:]
    return record


# ------------------------------------------------------------------------------------------- table
def _number(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def table(parts: dict[str, dict]) -> str:
    """The suite's figures as a Markdown table: one row per figure, the part it came from."""
    rows: list[tuple[str, str, str]] = []

    def result(name: str) -> dict | None:
        return parts.get(name, {}).get("result")

    if (r := result("ceilings")) is not None:
        rows.append(("card", r["device"], f"torch {r['torch']}, CUDA {r['cuda']}, transformers {r.get('transformers')}"))
        rows.append(("measured bf16 matmul", f"{_number(r['bf16_matmul_flops'] / 1e12)} TFLOP/s", f"{r['matmul_size']}³, median"))
        rows.append(("measured copy bandwidth", f"{_number(r['copy_bytes_per_s'] / 1e9)} GB/s", "read + write"))
    for name, label in (("train", "train, eager"), ("train-compile", "train, compiled"),
                        ("train-large", "train-large, compiled"), ("train-graphs", "train, CUDA graphs")):
        if (r := result(name)) is None:
            continue
        where = f"{r['preset']}, micro-batch {r['micro_batch']}, {r['seq_len']} tokens, {r['precision_used']}"
        rows.append((f"{label}: tokens/s", _number(r["tokens_per_s"]), where))
        rows.append((f"{label}: MFU", _number(r["mfu"] and 100 * r["mfu"], 3) + " %", r["peak_flops_source"]))
        rows.append((f"{label}: peak memory", f"{r['peak_memory_gib']:.2f} GiB", r["peak_memory_method"]))
        if r.get("baseline_tokens_per_s"):
            rows.append(("baseline fp32 (GPT2LMHeadModel): tokens/s", _number(r["baseline_tokens_per_s"]),
                         f"gptdraw {r['speedup']:.2f}× faster, baseline MFU {100 * r['baseline_mfu']:.1f} %"))
        if r.get("baseline_bf16_tokens_per_s"):
            rows.append(("baseline bf16 autocast: tokens/s", _number(r["baseline_bf16_tokens_per_s"]),
                         f"gptdraw {r['speedup_over_bf16_baseline']:.2f}× faster, "
                         f"baseline MFU {100 * r['baseline_bf16_mfu']:.1f} %"))
        if r.get("profile"):
            profile = r["profile"]
            busy = profile["device_busy_fraction"]
            top = ", ".join(f"{op['name'][:40]} {op['self_ms_per_step']:.1f}" for op in profile["top_ops"][:4])
            rows.append((f"{label}: ms per step (profiled)", f"{profile['wall_ms_per_step']:.1f}",
                         (f"device busy {100 * busy:.0f} %; " if busy is not None else "") + f"top ms/step: {top}"))
    if (r := result("draw")) is not None:
        images = r["batch"]
        rows.append((f"draw {images} images, compiled, with decode", f"{r['seconds']:.3f} s",
                     f"sampling {r['sampling_seconds']:.3f} s + decode {r['decode_seconds']:.3f} s, "
                     f"CFG {r['settings']['cfg_scale']}, {r['dtype']}"))
        check = r.get("compiled_check") or {}
        if check:
            rows.append((f"draw {images} images, not compiled (sampling)", f"{check['uncompiled_sampling_seconds']:.3f} s",
                         f"compiled step draws the eager codes: {check['codes_equal']} "
                         f"({100 * check['equal_fraction']:.1f} % equal)"))
        if r.get("baseline_seconds"):
            rows.append((f"GPT2LMHeadModel.generate, {images} images, with decode", f"{r['baseline_seconds']:.3f} s",
                         f"gptdraw {r['speedup']:.1f}× faster (sampling alone {r['sampling_speedup']:.1f}×)"))
        rows.append(("first compiled draw (compiles)", f"{r['first_draw_seconds']:.1f} s", "once per process and shape"))
    if (r := result("draw-fp32")) is not None and r.get("compiled_check"):
        check = r["compiled_check"]
        rows.append(("compiled step = eager step, fp32", str(check["codes_equal"]),
                     f"{100 * check['equal_fraction']:.1f} % of codes equal, first difference at step "
                     f"{check['first_difference_step']}"))
    for name in ("encode", "encode-compile"):
        size = ((result(name) or {}).get("environment") or {}).get("image_size")
        for item in (result(name) or {}).get("results", []):
            rows.append((f"encode {size} px, {item['variant']}, batch {item['batch_size']}",
                         f"{item['encode_images_per_s']:,.0f} images/s", f"decode {item['decode_images_per_s']:,.0f} images/s"))
    if (r := result("checks")) is not None:
        if "precision" in r:
            p = r["precision"]
            rows.append(("bf16 losses vs fp32", "skipped" if "skipped" in p else ("pass" if p["passed"] else "FAIL"),
                         p.get("skipped") or f"max relative difference {p['max_relative_difference']:.2e} "
                         f"over {p['steps']} steps (tolerance {p['tolerance']})"))
        if "sync" in r:
            p = r["sync"]
            rows.append(("no host sync in a training step", "skipped" if "skipped" in p else ("pass" if p["passed"] else "FAIL"),
                         p.get("skipped") or f"{p['steps']} steps under torch.cuda.set_sync_debug_mode('error')"
                         + (f"; first: {p['first_sync']}" if p.get("first_sync") else "")))
        if "resume" in r:
            p = r["resume"]
            rows.append(("stop and resume", "pass" if p["passed"] else "FAIL",
                         f"bit-identical {p['bit_identical']}, max relative difference {p['max_relative_difference']:.1e} "
                         f"(run-to-run {p['run_to_run_relative_difference']:.1e}, tolerance {p['tolerance']})"))
    if (r := result("launch")) is not None and "launch" in r:
        p = r["launch"]
        for name in ("plain", "fsdp2"):
            if name in p:
                rows.append((f"accelerate launch, {name}", "pass" if p[name]["passed"] else "FAIL",
                             f"ran as {p[name]['distributed_type']}, {p[name]['seconds']:.0f} s"))
    for name, record in parts.items():
        if record["status"] != "ok":
            rows.append((f"part {name}", record["status"], f"after {record.get('seconds', 0)} s"))
    lines = ["| figure | value | notes |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on a CPU: checks that every part runs")
    parser.add_argument("--out", default="bench/out/gpu", help="folder for gpu.json, gpu.md and the parts' logs")
    parser.add_argument("--budget", type=float, default=420, help="seconds for the whole suite (default: 7 minutes)")
    parser.add_argument("--parts", nargs="+", help="run only these parts (default: all, in order)")
    parser.add_argument("--cap-scale", type=float, default=1.0,
                        help="multiply every part's time cap (a dry run on a loaded machine, where a cap only guards "
                             "against a hang)")
    parser.add_argument("--jobs", type=int, default=0,
                        help="parts run at once (default: 1, or 2 for a dry run, which times nothing)")
    parser.add_argument("--table", action="store_true", help="only write and print the table of OUT/gpu.json again")
    args = parser.parse_args(argv)
    if args.table:
        markdown = table(json.loads((Path(args.out) / "gpu.json").read_text())["parts"])
        (Path(args.out) / "gpu.md").write_text(markdown + "\n")
        print(markdown)
        return 0
    parts = every_part = [replace(part, cap_s=part.cap_s * args.cap_scale)
                          for part in (dry_parts() if args.dry_run else full_parts())]
    if args.parts:
        unknown = set(args.parts) - {part.name for part in parts}
        if unknown:
            parser.error(f"unknown parts {sorted(unknown)}; the parts are {[part.name for part in parts]}")
        parts = [part for part in parts if part.name in args.parts]
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.budget
    records: dict[str, dict] = {}
    if args.parts and (out_dir / "gpu.json").exists():
        # Rerunning some parts keeps the others' records from the earlier run (with its date).
        earlier = json.loads((out_dir / "gpu.json").read_text())
        records = {name: {**record, "date": record.get("date", earlier.get("date"))}
                   for name, record in earlier["parts"].items() if name not in args.parts}
    all_parts = every_part
    lock = threading.Lock()

    def run(part: Part) -> None:
        left = deadline - time.monotonic()
        # A part starts only with at least a third of its cap left: less would measure nothing.
        if left < part.cap_s / 3:
            record = {"status": "skipped", "seconds": 0, "reason": f"{left:.0f} s of the budget left"}
            print(f"[gpu] {part.name}: skipped ({left:.0f} s left)", flush=True)
        else:
            print(f"[gpu] {part.name}: running (cap {min(part.cap_s, left):.0f} s)", flush=True)
            # Parts side by side share the cores: one thread each, instead of each taking them all.
            record = run_part(part, out_dir, min(part.cap_s, left), threads=1 if jobs > 1 else None)
            print(f"[gpu] {part.name}: {record['status']} in {record['seconds']} s", flush=True)
        record["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        with lock:
            records[part.name] = record
            ordered = {p.name: records[p.name] for p in all_parts if p.name in records}
            summary = {"dry_run": args.dry_run, "budget_s": args.budget, "jobs": jobs,
                       "ran": [name for name, r in ordered.items() if r["status"] != "skipped"],
                       "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "parts": ordered}
            (out_dir / "gpu.json").write_text(json.dumps(summary, indent=2) + "\n")  # after each part: nothing is lost

    # Timed parts run one at a time (two would share the device); a dry run times nothing.
    jobs = args.jobs or (2 if args.dry_run else 1)
    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(run, parts))
    records = {part.name: records[part.name] for part in all_parts if part.name in records}
    markdown = table(records)
    (out_dir / "gpu.md").write_text(markdown + "\n")
    print(markdown)
    return 0 if all(record["status"] in ("ok", "skipped") for record in records.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
