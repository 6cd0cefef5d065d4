"""rsz-infer as a real process, stopped after its first batches: by SIGINT (Ctrl-C) or SIGTERM (`kill`, a
scheduler) exit 130, the `interrupted` line and a complete output of what finished, --resume (label) or the
same command (index) finishing the rest; killed by SIGKILL, an index call keeps what it embedded in its
journal for the next call."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rsz_infer.cli import main
from rsz_infer.index import Index
from rsz_infer.locking import OutputLock

from .helpers import write_geotiff
from .test_label import run_cli

# 512 x 512 px scene in 8 px windows, one per batch: several seconds of work, each batch fsync'd, so that a
# test process slowed by a loaded machine still signals well before the run ends (1024 windows did not)
SIDE = 512
WINDOWS = (SIDE // 8) ** 2


def _rsz_infer() -> list[str]:
    script = Path(sys.executable).parent / "rsz-infer"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "rsz_infer.cli"]


def _sigint_as_in_a_terminal() -> None:
    """The child's SIGINT and SIGTERM as a shell gives them: not ignored, not blocked. A child inherits both
    from the test process, where an earlier test's native library may have changed them (the whole suite,
    not this file alone, ran the child deaf to SIGINT)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _complete_lines(path: Path) -> int:
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return 0
    return text.count(b"\n")


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_stopped_after_the_first_batch_exits_130_and_resume_finishes(
    stop, bundles, class_file, tmp_path, capsys
):
    rng = np.random.default_rng(0)
    scene = write_geotiff(tmp_path / "scene.tif", rng.integers(0, 256, (3, SIDE, SIDE)).astype(np.uint8))
    out = tmp_path / "labels.csv"
    part = out.with_name(out.name + ".part")
    args = [scene, "--classes", class_file, "--model", bundles["msa"], "--out", out, "--tile-size", "8"]
    proc = _start([*args, "--batch", "1", "--quiet"])
    # the run header, then the first batch
    err = _stop_when(proc, lambda: _complete_lines(part) >= 2, stop, "no first batch")
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    parent = f"test process: SIGINT {signal.getsignal(signal.SIGINT)}, blocked {blocked}"
    assert proc.returncode == 130, f"{err}\n{parent}"
    lines = err.strip().splitlines()  # start-up notes, then the pipeline's line and the CLI's "interrupted"
    interrupted = [line for line in lines if line.startswith("interrupted")]
    assert interrupted and lines[-1].startswith("interrupted") and "Traceback" not in err, err
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert 1 <= len(rows) < WINDOWS, "the run finished before the signal came: make the scene bigger"
    assert interrupted[0].startswith(f"interrupted: {len(rows)} tiles written to {out}"), err
    assert all(r["label_1"] in ("red", "green", "blue") and r["window"] for r in rows)
    assert part.is_file() and _complete_lines(part) == 1 + len(rows)  # the log holds exactly what is out

    code, _, err = run_cli([*args, "--batch", "256", "--resume", "--quiet"], capsys)
    assert code == 0, err
    assert f"{WINDOWS - len(rows)} tiles labeled" in err and f"{len(rows)} done before (resumed)" in err
    with open(out, newline="") as f:
        resumed = list(csv.DictReader(f))
    assert len(resumed) == WINDOWS and len({r["tile"] for r in resumed}) == WINDOWS
    assert [r["tile"] for r in resumed[: len(rows)]] == [r["tile"] for r in rows]  # what was done stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.csv", "labels.csv.run.json", "scene.tif"]


def _start(args: list) -> subprocess.Popen:
    """rsz-infer ARGS as a real process, its stderr kept."""
    return subprocess.Popen(
        [*_rsz_infer(), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_sigint_as_in_a_terminal,
    )


def _stop_when(proc: subprocess.Popen, ready, stop: int, what: str, seconds: float = 60) -> str:
    """Send `stop` once ready() holds (within `seconds`, else fail with `what`); the process's stderr."""
    try:
        deadline = time.monotonic() + seconds
        while not ready():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, f"{what} within {seconds} s"
            time.sleep(0.005)
        os.kill(proc.pid, stop)
        _, err = proc.communicate(timeout=seconds)
    finally:
        if proc.poll() is None:
            proc.kill()
    return err


def _index_stopped_by(stop: int, scene: Path, bundle: Path, folder: Path) -> tuple[Path, Path, str]:
    """(index folder, its journal, stderr) of an `index` call stopped by `stop` after its third batch."""
    out, journal = folder / "idx", folder / ".idx.pending"
    proc = _start(
        ["index", scene, "--model", bundle, "--out", out, "--tile-size", "8", "--batch", "1", "--quiet"]
    )
    err = _stop_when(proc, lambda: _complete_lines(journal / "tiles.jsonl") >= 3, stop, "not 3 batches")
    return out, journal, err


@pytest.fixture(scope="module")
def index_scene(tmp_path_factory) -> Path:
    rng = np.random.default_rng(1)
    folder = tmp_path_factory.mktemp("index_scene")
    return write_geotiff(folder / "scene.tif", rng.integers(0, 256, (3, SIDE, SIDE)).astype(np.uint8))


@pytest.fixture(scope="module")
def whole_index(bundles, index_scene, tmp_path_factory) -> Index:
    """The scene indexed by one call that was never stopped: what a stopped and continued one must equal."""
    out = tmp_path_factory.mktemp("whole") / "idx"
    with pytest.raises(SystemExit) as exit_info:
        main(["index", str(index_scene), "--model", str(bundles["msa"]), "--out", str(out),
              "--tile-size", "8", "--batch", "256", "--quiet"])  # fmt: skip
    assert exit_info.value.code == 0
    return Index.load(out)


def _same_rows(index: Index, whole: Index) -> None:
    row = {t["tile"]: i for i, t in enumerate(whole.tiles)}
    order = [row[t["tile"]] for t in index.tiles]
    assert sorted(order) == list(range(WINDOWS))  # every window once
    assert [index.tiles[i] for i in range(WINDOWS)] == [whole.tiles[j] for j in order]
    assert np.allclose(index.embeddings, whole.embeddings[order], atol=1e-5)
    assert np.allclose(index.scales, np.asarray(whole.scales)[order], atol=1e-5)


def test_index_killed_by_sigkill_keeps_its_batches_for_the_next_call(
    bundles, index_scene, whole_index, tmp_path, capsys
):
    out, journal, err = _index_stopped_by(signal.SIGKILL, index_scene, bundles["msa"], tmp_path)
    assert not out.exists(), err  # no chance to write the index: its batches are in the journal only
    kept = _complete_lines(journal / "tiles.jsonl")
    assert 3 <= kept < WINDOWS
    with open(journal / "tiles.jsonl", "ab") as f:  # a kill inside a write leaves a cut last line
        f.write(b'{"tile": "scene.tif:8')

    tiles = [index_scene, "--out", out, "--tile-size", "8", "--quiet"]
    code, _, err = run_cli(["index", *tiles, "--model", bundles["mcfa"]], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert f"{journal} holds {kept} tiles a stopped index call embedded with another model" in err
    code, _, err = run_cli(["index", *tiles, "--model", bundles["msa"], "--batch", "256"], capsys)
    assert code == 0, err
    assert f"{kept} tiles a stopped index call embedded" in err, err
    assert f"{WINDOWS - kept} tiles added, {kept} already in" in err, err
    assert not journal.exists()
    _same_rows(Index.load(out), whole_index)


def test_index_stopped_by_sigterm_writes_what_finished_and_the_same_command_adds_the_rest(
    bundles, index_scene, whole_index, tmp_path, capsys
):
    out, journal, err = _index_stopped_by(signal.SIGTERM, index_scene, bundles["msa"], tmp_path)
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "interrupted", err
    done = Index.load(out)
    # the signal came after 3 journaled batches; one more may have been in flight (not yet kept)
    assert 2 <= len(done.tiles) < WINDOWS, err
    assert f"interrupted: {len(done.tiles)} new tiles saved in {out}" in err
    assert not journal.exists()  # its rows went into the index

    tiles = [index_scene, "--out", out, "--tile-size", "8", "--quiet"]
    code, _, err = run_cli(["index", *tiles, "--model", bundles["msa"], "--batch", "256"], capsys)
    assert code == 0, err
    assert f"{WINDOWS - len(done.tiles)} tiles added, {len(done.tiles)} already in" in err, err
    _same_rows(Index.load(out), whole_index)


def test_ray_job_stopped_by_sigterm_exits_130_and_keeps_its_partitions(
    bundles, class_file, index_scene, tmp_path
):
    """ray.init sets its own SIGTERM handlers (the driver exits at once, Ray's native one prints a stack
    dump): rsz-infer takes SIGTERM back, so a stopped --ray job ends as on Ctrl-C."""
    pytest.importorskip("ray")
    out = tmp_path / "labels.csv"
    parts = tmp_path / "labels.csv.parts"
    args = [index_scene, "--classes", class_file, "--model", bundles["msa"], "--out", out, "--tile-size", "8"]
    ray_args = ["--ray", "local", "--ray-actors", "1", "--ray-partition-tiles", "64", "--batch", "1"]
    proc = _start([*args, *ray_args, "--quiet"])
    two_parts = lambda: len(list(parts.glob("part-*.parquet"))) >= 2  # noqa: E731
    err = _stop_when(proc, two_parts, signal.SIGTERM, "no two partitions", seconds=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "interrupted", err
    assert "SIGTERM received" not in err and "Traceback" not in err, err
    kept = len(list(parts.glob("part-*.parquet")))
    assert 2 <= kept < WINDOWS // 64 and not out.exists()  # --resume goes on from these
    # said as the single-process path says it (it used to be the bare "interrupted" line alone); an actor
    # may rename one more partition after the driver counted them
    said = f"interrupted: ([0-9]+) of {WINDOWS // 64} partitions in {re.escape(str(parts))}; "
    said += "run again with --resume to finish"
    found = re.search(said, err)
    assert found and int(found.group(1)) in (kept - 1, kept), err


def test_merge_refuses_and_search_warns_of_an_append_killed_until_it_is_finished(
    bundles, index_scene, tmp_path, capsys
):
    """An append killed by SIGKILL leaves its tiles in the journal beside the index: a merge would lack
    them silently, so it is refused until the same index call ran again; a search says it cannot find them."""
    small = write_geotiff(tmp_path / "small.tif", np.full((3, 16, 16), 7, np.uint8))
    out = tmp_path / "idx"
    code, _, err = run_cli(
        ["index", small, "--model", bundles["msa"], "--out", out, "--tile-size", "8"], capsys
    )
    assert code == 0, err
    _, journal, _ = _index_stopped_by(signal.SIGKILL, index_scene, bundles["msa"], tmp_path)
    assert (out / "index.json").is_file() and _complete_lines(journal / "tiles.jsonl") >= 3

    code, _, err = run_cli(["merge", tmp_path / "merged", out], capsys)
    assert code == 2 and err.count("\n") == 1 and f"a stopped index call left tiles in {journal}" in err, err
    code, hits, err = run_cli(["search", out, "--image", small, "-k", "2"], capsys)
    assert code == 0 and len(hits.splitlines()) == 2, err  # the index answers, and says what it lacks
    assert f"a stopped index call left tiles in {journal}" in err and "this search cannot find" in err, err
    with OutputLock(out, "index call"):  # as a running append holds it: merge waits, search is quiet
        code, _, err = run_cli(["merge", tmp_path / "merged", out], capsys)
        assert code == 2 and "an index call is adding tiles to it right now; merge when" in err, err
        code, _, err = run_cli(["search", out, "--image", small, "-k", "2"], capsys)
        assert code == 0 and "cannot find" not in err, err
    tiles = [index_scene, "--out", out, "--tile-size", "8", "--batch", "256", "--quiet"]
    code, _, err = run_cli(["index", *tiles, "--model", bundles["msa"]], capsys)
    assert code == 0, err
    code, _, err = run_cli(["merge", tmp_path / "merged", out], capsys)
    assert code == 0 and f"{4 + WINDOWS} tiles from 1 indexes" in err, err


def test_a_journal_cut_by_a_kill_while_it_was_removed_is_no_journal_or_one_line(
    bundles, index_scene, tmp_path, capsys
):
    """remove_journal unlinks header.json first: a kill after that leaves no journal; a journal whose
    floats are gone (a damaged one) is one line saying to delete it, not a traceback."""
    out, journal, _ = _index_stopped_by(signal.SIGKILL, index_scene, bundles["msa"], tmp_path)
    (journal / "embeddings.f32").unlink()
    tiles = [index_scene, "--out", out, "--tile-size", "8", "--batch", "256", "--quiet"]
    code, _, err = run_cli(["index", *tiles, "--model", bundles["msa"]], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "embeddings.f32: missing, for" in err and f"a damaged journal; delete {journal})" in err, err
    (journal / "header.json").unlink()  # as remove_journal leaves it when killed after its first step
    code, _, err = run_cli(["index", *tiles, "--model", bundles["msa"]], capsys)
    assert code == 0 and f"{WINDOWS} tiles added" in err, err
    assert not journal.exists()


# A real SIGTERM (or Ctrl-C's SIGINT) while click parses the command line, before any command (and its
# handling of a stop) runs: the child sends it to itself from click's argument parser, the one moment a
# scheduler's stop can be timed
_SIGNAL_WHILE_PARSING = """
import os, signal, sys
import click
parse = click.Command.parse_args
sent = getattr(signal, sys.argv.pop(1))
def parse_args(self, ctx, args):
    os.kill(os.getpid(), sent)
    return parse(self, ctx, args)
click.Command.parse_args = parse_args
module, _, name = sys.argv.pop(1).partition(":")
getattr(__import__(module, fromlist=[name]), name)()
"""


@pytest.mark.parametrize(
    "sent, entry",
    [
        ("SIGTERM", "rsz_infer.cli:main"),
        ("SIGTERM", "rsz_infer.entry:train_main"),
        ("SIGTERM", "rsz_infer.entry:export_main"),
        ("SIGINT", "rsz_infer.cli:main"),
        ("SIGINT", "rsz_infer.entry:train_main"),
    ],
)
def test_a_stop_while_the_command_line_is_parsed_is_the_same_line_and_exit_130(sent, entry):
    """It was "Aborted!" and exit 1 (rsz-infer's SIGTERM, and every Ctrl-C: click's own answer to the
    KeyboardInterrupt), or no line and the exit of a process killed by SIGTERM (rsz-train, rsz-export: no
    handler yet)."""
    done = subprocess.run(
        [sys.executable, "-c", _SIGNAL_WHILE_PARSING, sent, entry, "--help"],
        capture_output=True, text=True, timeout=60, preexec_fn=_sigint_as_in_a_terminal,
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (130, "interrupted\n"), done


# The same while the console script imports its module (rsz-infer's imports take a second or more): the child
# sends the signal as the module's import starts, and runs the entry point pyproject.toml installs
_SIGNAL_WHILE_IMPORTING = """
import importlib, importlib.abc, os, signal, sys
sent = getattr(signal, sys.argv.pop(1))
module, _, name = sys.argv.pop(1).partition(":")
class StopAtImport(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname == "rsz_infer.cli":
            os.kill(os.getpid(), sent)
        return None
sys.meta_path.insert(0, StopAtImport())
getattr(importlib.import_module(module), name)()
"""


@pytest.mark.parametrize("sent", ["SIGTERM", "SIGINT"])
def test_a_stop_while_rsz_infer_imports_is_the_same_line_and_exit_130(sent):
    """rsz-infer's console script imported rsz_infer.cli before any handler was set: Ctrl-C in its first
    second was a KeyboardInterrupt traceback, SIGTERM the exit of a killed process and no line."""
    import tomllib

    scripts = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]["scripts"]
    done = subprocess.run(
        [sys.executable, "-c", _SIGNAL_WHILE_IMPORTING, sent, scripts["rsz-infer"], "--help"],
        capture_output=True, text=True, timeout=60, preexec_fn=_sigint_as_in_a_terminal,
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (130, "interrupted\n"), done
