"""Fault injection for `biomamba data build` and the readers of its output (issue 23).

* SIGKILL mid-file (pool workers busy) and mid-shard-write: the next run removes the partial
  results, says so, reuses what was finished and writes byte-identical shards.
* A truncated or corrupted shard (or row table): `data inspect --verify` and the trainer
  exit non-zero with one line naming the file and the cause, no traceback.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from biomamba.cli import main as cli
from biomamba.commands.data import load_data_config
from biomamba.data import build as build_mod
from biomamba.data.build import build
from biomamba.data.readers import DataError
from biomamba.data.shards import PackedDataset, ShardError
from biomamba.data.tokenizer import train_tokenizer
from biomamba.demo_corpus import DEMO_DATA, demo_texts

REPO = Path(__file__).resolve().parents[1]

# Runs the real CLI after patching one write so that it marks where it is (a file named
# marker-PID) and waits there to be killed from outside: a kill at a known point, every time.
_PAUSING_CLI = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from biomamba.data import shards, tokenise

    stage, marks = os.environ["FAULT_STAGE"], Path(os.environ["FAULT_MARKS"])

    def pause():
        (marks / f"marker-{os.getpid()}").write_text("")
        time.sleep(300)

    if stage == "tokenise":  # after the first full batch of a file is on disk, the file not finished
        flush = tokenise._Encoder.flush
        def paused_flush(self):
            flush(self)
            if len(self.docs) >= self.batch_docs:
                pause()
        tokenise._Encoder.flush = paused_flush
    else:  # after the second shard file of the training split is written
        close_shard = shards.ShardWriter._flush
        def paused_close_shard(self):
            close_shard(self)
            if len(self.shards) == 2 and self.split == "train":
                pause()
        shards.ShardWriter._flush = paused_close_shard
    from biomamba.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def demo_config(tmp_path_factory) -> Path:
    """The embedded demo corpus, 2 workers, small batches and shards (so a kill lands mid-way)."""
    root = tmp_path_factory.mktemp("faults")
    tok = train_tokenizer(demo_texts(DEMO_DATA), vocab_size=384).save(root / "tok")
    cfg = {"tokenizer": str(tok), "seq_len": 64, "val_sequences": 16, "workers": 2, "batch_size": 16,
           "shard_sequences": 64, "sources": [
               {"name": "pubmed", "format": "medline", "ratio": 0.8,
                "paths": [str(DEMO_DATA / "medline" / "demo-baseline.xml.gz"),
                          str(DEMO_DATA / "medline" / "demo-update.xml")]},
               {"name": "c4", "format": "jsonl", "ratio": 0.1, "paths": [str(DEMO_DATA / "c4" / "c4-demo.jsonl")]},
               {"name": "wikipedia", "format": "wikitext", "ratio": 0.1,
                "paths": [str(DEMO_DATA / "wikitext" / "wiki-demo.raw")]}]}
    path = root / "data.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def reference(demo_config, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "data"
    build(load_data_config(demo_config, []), out)
    return out


def _outputs(root: Path) -> dict[str, bytes]:
    """What must not depend on an interruption: the shards, row tables, indexes and the manifest."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and (p.parts[len(root.parts)] in ("train", "val", "index") or p.name == "manifest.json")}


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie nobody reaps is dead all the same


def _kill_when_paused(cmd: list[str], stage: str, marks: Path) -> list[int]:
    """Start ``cmd``, SIGKILL its main process once some process has paused at the marker; the pausers' pids.

    Output goes to a file, not a pipe: a worker that outlived the kill would hold a pipe open.
    """
    marks.mkdir()
    with open(marks.parent / f"{stage}.log", "w") as log:
        proc = subprocess.Popen(cmd, env={**_env(), "FAULT_STAGE": stage, "FAULT_MARKS": str(marks)}, cwd=REPO,
                                stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while not list(marks.glob("marker-*")):
        if proc.poll() is not None:
            raise AssertionError(f"the build ended before the fault point:\n"
                                 f"{(marks.parent / f'{stage}.log').read_text()[-3000:]}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("the build never reached the fault point")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    return [int(p.name.split("-")[1]) for p in marks.glob("marker-*")]


@pytest.mark.skipif(sys.platform != "linux", reason="SIGKILL and /proc: Linux")
@pytest.mark.parametrize("stage", ["tokenise", "write"])
def test_sigkill_then_rerun_cleans_up_resumes_and_matches(stage, demo_config, reference, tmp_path):
    out = tmp_path / "data"
    script = tmp_path / "pausing_cli.py"
    script.write_text(_PAUSING_CLI)
    args = ["data", "build", "--config", str(demo_config), "--out", str(out)]
    paused = _kill_when_paused([sys.executable, str(script), *args], stage, tmp_path / "marks")

    work = tmp_path / ".data.work"
    if stage == "tokenise":
        # the paused processes were pool workers: they die with the build (no orphan keeps writing)
        deadline = time.time() + 10
        while any(_alive(pid) for pid in paused) and time.time() < deadline:
            time.sleep(0.05)
        orphans = [pid for pid in paused if _alive(pid)]
        for pid in orphans:  # ours: do not leave them sleeping if the check fails
            os.kill(pid, signal.SIGKILL)
        assert not orphans, "pool workers outlived the SIGKILLed build"
        partial = list((work / "units").glob("*.tmp"))
        assert any((p / "tokens.bin").stat().st_size > 0 for p in partial)  # killed with tokens on disk
    else:
        (half,) = [p for p in tmp_path.iterdir() if p.name.startswith(".data.") and p.name.endswith(".tmp")]
        assert len(list((half / "train").glob("train-*.bin"))) == 2 and not (half / "manifest.json").exists()
    assert not out.exists()

    rerun = subprocess.run([sys.executable, "-m", "biomamba.cli", *args], env=_env(), cwd=REPO, capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    log = rerun.stderr
    if stage == "tokenise":
        assert "an earlier build was interrupted while reading" in log and "discarding its partial result" in log
    else:
        assert f"an earlier build of {out} was interrupted while writing it: removing its half-written output" in log
        assert "resuming an earlier build: 4 of 4 files already tokenised" in log
    assert _outputs(out) == _outputs(reference)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".data.")]
    assert leftovers == []  # no temporary output, no work directory, no parked old output


def test_leftovers_of_interrupted_builds_are_removed_and_reported(demo_config, reference, tmp_path, caplog):
    cfg = load_data_config(demo_config, ["--keep_work=true"])
    out = tmp_path / "data"
    build(cfg, out)
    units = sorted((tmp_path / ".data.work" / "units").iterdir())
    (units[0] / "tokens.bin").unlink()  # a unit whose removal was interrupted
    (tmp_path / ".data.work" / "units" / "0123456789abcdef01234567").mkdir()  # from other settings
    (tmp_path / ".data.old").mkdir()  # the previous output parked by an interrupted swap
    (tmp_path / ".data.k2j4_x9z.tmp" / "train").mkdir(parents=True)  # a half-written output
    (tmp_path / ".data.v2.abcdefgh.tmp").mkdir()  # another output's temporary: not ours to remove
    with caplog.at_level(logging.INFO, logger="biomamba.data"):
        build(cfg, out)
    text = caplog.text
    assert "removing its half-written output .data.k2j4_x9z.tmp" in text
    assert "removing the previous output parked at .data.old" in text
    assert "discarding the intermediate result of" in text and "missing tokens.bin" in text
    assert "removed 1 intermediate result(s) of an earlier build that this one does not use" in text
    assert "resuming an earlier build: 3 of 4 files already tokenised" in text
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".data.")) == [".data.v2.abcdefgh.tmp",
                                                                                          ".data.work"]
    ours, theirs = _outputs(out), _outputs(reference)
    assert ours.pop("manifest.json") != theirs.pop("manifest.json")  # config.keep_work differs, nothing else
    assert ours == theirs


def test_a_second_build_of_the_same_output_is_refused(demo_config, tmp_path):
    cfg = load_data_config(demo_config, [])
    out = tmp_path / "data"
    with build_mod._lock(tmp_path / ".data.work", out):
        with pytest.raises(DataError, match=r"another `biomamba data build` \(pid \d+\) is writing it") as info:
            build(cfg, out)
    assert info.value.reason == "busy" and not out.exists()


def _damage(path: Path, how: str) -> None:
    path.chmod(0o644)
    if how == "truncated":
        os.truncate(path, path.stat().st_size - 100)
    else:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))


@pytest.fixture
def damaged_copy(reference, tmp_path):
    import shutil

    def make(how: str, name: str = "train/train-00003.bin") -> tuple[Path, Path]:
        root = tmp_path / f"copy-{how}-{name.replace('/', '-')}"
        shutil.copytree(reference, root)
        _damage(root / name, how)
        return root, root / name

    return make


@pytest.mark.parametrize("how,cause", [("truncated", "bytes, expected"), ("corrupted", "sha256 differs")])
def test_inspect_verify_names_a_bad_shard(how, cause, damaged_copy, capsys):
    root, bad = damaged_copy(how)
    for samples in ("0", "2"):
        assert cli(["data", "inspect", str(root), "--verify", "--samples", samples]) == 1
        out, err = capsys.readouterr()
        lines = [line for line in (out + err).splitlines() if str(bad) in line]
        assert len(lines) == 1 and cause in lines[0] and "Traceback" not in out + err
        if how == "truncated":
            assert "(truncated; rebuild the data with `biomamba data build`)" in lines[0]
    root, bad = damaged_copy(how, "val/rows.npy")
    assert cli(["data", "inspect", str(root), "--verify", "--samples", "0"]) == 1
    assert f"{bad}: sha256 differs from manifest.json" in capsys.readouterr().out


def test_dataset_checks_sizes_always_and_hashes_once_per_process(damaged_copy, reference):
    root, bad = damaged_copy("corrupted")
    with pytest.raises(ShardError, match=rf"^{bad}: sha256 differs from manifest.json \(corrupted or modified"):
        PackedDataset(root, "train")
    assert len(PackedDataset(root, "train", verify=False)) > 0  # same size: only the hash can tell
    val_rows = json.loads((reference / "manifest.json").read_text())["splits"]["val"]["sequences"]
    assert len(PackedDataset(root, "val")) == val_rows > 0  # the val split's files are fine
    root, bad = damaged_copy("truncated")
    with pytest.raises(ShardError, match=rf"^{bad}: [\d,]+ bytes, expected [\d,]+ \(truncated"):
        PackedDataset(root, "train", verify=False)
    (root / "manifest.json").write_text('{"format": "biomamba-pack')
    with pytest.raises(ShardError, match=r"manifest.json: not valid JSON"):
        PackedDataset(root, "train")


@pytest.mark.parametrize("how", ["truncated", "corrupted"])
def test_trainer_refuses_a_bad_shard_with_one_line(how, damaged_copy, tmp_path):
    from test_train_support import recipe, write_recipe

    root, bad = damaged_copy(how)
    config = write_recipe(tmp_path / "recipe.yaml", recipe(root))
    proc = subprocess.run([sys.executable, "-m", "biomamba.cli", "pretrain", "--config", str(config), "--out",
                           str(tmp_path / "run")], env=_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines[0].startswith(f"biomamba pretrain: ShardError: {bad}: ")
    assert ("bytes, expected" if how == "truncated" else "sha256 differs") in lines[0]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
