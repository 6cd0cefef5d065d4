"""Peak memory (max RSS) of `rsz-infer` labeling: 2,000 and 20,000 tiny PNG tiles, and one GeoTIFF whose
header declares 200,000 x 200,000 pixels (tiled, sparse: a few MB on disk, one block of data), and the
--resume read of that scene's run log (611,524 windows).

Each run is its own process; its max RSS comes from the kernel (os.wait4). A run still going after
--limit-s seconds is stopped with Ctrl-C (SIGINT: rsz-infer writes what finished) and its peak so far is
reported with "stopped". `--code DIR` runs another checkout's rsz_infer (e.g. an older commit unpacked
with `git archive`), so one script measures before and after on the same files.
    python benchmarks/memory_peak.py --work /tmp/mem --code /tmp/rsz_before --code . --out results/memory
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout first

from rsz_bench.report import markdown_table, new_result, write_result  # noqa: E402

RUN = "import sys\nfrom rsz_infer.cli import main\nmain(sys.argv[1:])\n"
# --resume of the huge scene's run log, without the 90 s labeling run: the log of 611,524 windows (4 labeled,
# the rest nodata) is written once, then read as --resume reads it (the finished ids) and as the end of the
# run does (write_outputs). Peak memory is the process's VmHWM.
RESUME = """import json, sys
from pathlib import Path
from rsz_infer.outputs import RunLog, write_outputs
out = Path(sys.argv[1]) / "resume_labels.csv"
part = out.with_name(out.name + ".part")
header = {"model": "m"}
if not part.exists():
    with open(part, "w") as f:
        f.write(json.dumps({"run": header}) + "\\n")
        for n in range(782 * 782):
            tile = f"{sys.argv[1]}/huge.tif@{n % 782 * 256},{n // 782 * 256},256,256"
            record = {"tile": tile, "skipped": "all nodata", "nodata": True}
            if n < 4:
                record = {"tile": tile, "path": "huge.tif", "window": [n * 256, 0, 256, 256],
                          "labels": ["red"], "scores": [1.0], "similarities": [0.9], "rule": "rgb"}
            f.write(json.dumps(record) + "\\n")
log = RunLog(out, header, resume=True)
log.close()
written = write_outputs(log, out, 1, ["red"], None)
assert written["nodata"] == 782 * 782 - 4, written
out.unlink()
peak = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) // 1024
print("MAXRSS_MB", peak)
"""


def make_inputs(work: Path, counts: list[int], helpers_from: Path) -> dict[str, Path]:
    """Tile folders (24 px PNGs), the huge-header GeoTIFF, the tests' tiny real bundle and a class file."""
    from PIL import Image

    work.mkdir(parents=True, exist_ok=True)
    inputs: dict[str, Path] = {}
    rng = np.random.default_rng(0)
    colours = np.array([[220, 30, 30], [30, 200, 40], [30, 40, 210]])
    for count in counts:
        folder = work / f"tiles_{count}"
        if not folder.is_dir():
            folder.mkdir()
            for i in range(count):
                rgb = np.clip(colours[i % 3] + rng.integers(-8, 9, (24, 24, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(rgb).save(folder / f"t{i:05d}.png")
        inputs[f"{count} tiles"] = folder
    inputs["200000x200000 GeoTIFF"] = huge_geotiff(work / "huge.tif")
    # the tests' tiny real bundle (needs torch to export), written by the oldest checkout's code: a newer
    # rsz reads an older manifest, not the other way round
    if not (work / "bundle" / "manifest.json").is_file():
        script = (
            "import sys\nfrom pathlib import Path\nsys.path.insert(0, sys.argv[1] + '/tests/infer')\n"
            "from helpers import export_graphs, write_bundle\n"
            "work = Path(sys.argv[2])\nwrite_bundle(work / 'bundle', 'mcfa', export_graphs(work))\n"
        )
        env = dict(os.environ, PYTHONPATH=str(helpers_from))
        subprocess.run(
            [sys.executable, "-c", script, str(helpers_from), str(work)], env=env, cwd=work, check=True
        )
    (work / "classes.txt").write_text("red: red roofs\ngreen: green fields\nblue: blue water\n")
    return inputs


def huge_geotiff(path: Path, side: int = 200_000, block: int = 512) -> Path:
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    if not path.is_file():
        profile = {
            "driver": "GTiff", "width": side, "height": side, "count": 3, "dtype": "uint8", "nodata": 0,
            "crs": "EPSG:32633", "transform": from_origin(500000, 5000000, 10, 10), "tiled": True,
            "blockxsize": block, "blockysize": block, "sparse_ok": True, "BIGTIFF": "YES",
        }  # fmt: skip
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(np.full((3, block, block), 200, np.uint8), window=Window(0, 0, block, block))
    return path


def peak_rss(code: Path, args: list[str], limit_s: float, cwd: Path) -> dict:
    """Max RSS (MB) and wall time of one rsz-infer run with `code` first on the path."""
    env = dict(os.environ, PYTHONPATH=str(code), OMP_NUM_THREADS="1")
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", RUN, *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # cwd outside any checkout: `python -c` puts the working folder first on the path
    # wait4 reaps the child and gives its own resource usage (ru_maxrss in KB on Linux); Popen.poll would
    # reap it first and lose that
    stopped, pid, status, usage = False, 0, 0, None
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if not stopped and time.perf_counter() - start > limit_s:
            stopped = True
            proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)
    tail = proc.stderr.read().decode(errors="replace").strip().splitlines()[-1:] if proc.stderr else []
    return {
        "max_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "seconds": round(time.perf_counter() - start, 1),
        "exit": proc.returncode,
        "stopped": stopped,
        "last_line": tail[0][:160] if tail else "",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="Folder for the inputs (kept between runs).")
    parser.add_argument("--code", type=Path, action="append", required=True, help="Checkout(s) to measure.")
    parser.add_argument("--counts", default="2000,20000")
    parser.add_argument("--limit-s", type=float, default=120.0, help="Ctrl-C a run after this many seconds.")
    parser.add_argument("--out", type=Path, default=Path("results/memory"))
    opts = parser.parse_args()
    inputs = make_inputs(opts.work, [int(c) for c in opts.counts.split(",")], opts.code[0].resolve())
    rows = []
    for name, path in inputs.items():
        for code in opts.code:
            out = opts.work / f"labels_{code.resolve().name}_{path.stem}.csv"
            for leftover in (out, out.with_name(out.name + ".part")):
                leftover.unlink(missing_ok=True)
            args = [
                str(path),
                "--classes",
                str(opts.work / "classes.txt"),
                "--model",
                str(opts.work / "bundle"),
            ]
            args += ["--out", str(out), "--quiet", "--preprocess", "pillow"]
            result = peak_rss(code.resolve(), args, opts.limit_s, opts.work.resolve())
            rows.append({"input": name, "code": str(code)} | result)
            print(rows[-1], flush=True)
    for code in opts.code:  # the huge scene's --resume read and end-of-run read of its log
        env = dict(os.environ, PYTHONPATH=str(code.resolve()), OMP_NUM_THREADS="1")
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", RESUME, str(opts.work.resolve())],
            env=env, cwd=opts.work, capture_output=True, text=True,
        )  # fmt: skip
        peak = float(proc.stdout.split("MAXRSS_MB")[-1]) if proc.returncode == 0 else None
        rows.append(
            {"input": "run log of 611,524 windows read (--resume)", "code": str(code), "max_rss_mb": peak}
            | {"seconds": round(time.perf_counter() - start, 1), "exit": proc.returncode, "stopped": False}
        )
        print(rows[-1], flush=True)
    result = new_result("memory_peak", "Peak memory of labeling (max RSS)", rows=rows)
    columns = [("input", "input"), ("code", "code"), ("max_rss_mb", "max RSS MB"), ("seconds", "s")]
    columns += [("exit", "exit"), ("stopped", "stopped (Ctrl-C)")]
    write_result(result, markdown_table(rows, columns), opts.out, "memory_peak")


if __name__ == "__main__":
    main()
