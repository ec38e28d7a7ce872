r"""The ``inox-io`` command line, run in-process through :func:`inox_io.cli.main` and once
as a real process."""

import functools
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import inox_io

from inox_io.cli import ProgressBar, human_size, main, saved_at
from inox_io.formats import orbax_dir
from inox_io.formats.directory_commit import disk_bytes

from models import assert_tied, assert_trees_bits_equal, dtype_zoo, seed_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model():
    return seed_model()


@pytest.fixture
def seed(tmp_path, model) -> Path:
    path = tmp_path / "seed.safetensors"
    inox_io.save(path, model, metadata={"step": "1000"})
    return path


def corrupt(path: Path, dst: Path) -> Path:
    r"""A copy of a checkpoint with its last byte (array data, in both formats) flipped."""

    shutil.copy(path, dst)
    data = bytearray(dst.read_bytes())
    data[-1] ^= 0xFF
    dst.write_bytes(bytes(data))
    return dst


def test_inspect_shows_ties_and_totals(seed, capsys):
    assert main(["inspect", str(seed)]) == 0
    out = capsys.readouterr().out

    # Each tag, its preserved path and its aliases, in the root scope.
    assert "scope <root>" in out
    assert re.search(r"'l1'\s+\.l1\s+aliases \.l2\n", out)
    assert re.search(r"'l3\.weight'\s+\.l3\.weight\s+aliases \.l4\.weight\n", out)

    # The stored keys as a tree, with dtypes, shapes and sizes.
    assert re.search(r"\n  \.l1\.value\n    \.bias\.value\s+float32\[64\]\s+256 B\n", out)
    assert re.search(r"\.weight\.value\.value\s+float32\[64, 64\]\s+16\.0 KiB", out)
    assert ".l2" not in out.split("ties")[0]  # pruned positions are not stored

    assert "step = '1000'" in out
    assert "implicit sharing: none" in out
    # 3 * 256 + 2 * 16384 bytes stored; l2's bias and weight and l4's weight are aliases.
    assert "total: 5 arrays, 32.8 KiB stored, 32.2 KiB saved by sharing (3 aliased positions)" in out


def test_inspect_json_is_the_manifest(seed, capsys):
    assert main(["inspect", "--json", str(seed)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(inox_io.inspect(seed).to_json())
    assert printed["ties"][0] == {"scope": "", "tag": "l1", "path": ".l1", "aliases": [".l2"]}


def test_inspect_implicit_sharing_and_statics(tmp_path, capsys):
    w = jnp.ones((4, 4))
    path = tmp_path / "implicit.msgpack"
    with pytest.warns(UserWarning, match="without a Reference"):
        inox_io.save(path, {"a": w, "b": w, "act": "gelu", "depth": 3})

    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"implicit sharing .*\n  \['b'\]\s+= \['a'\]\n", out)
    assert re.search(r"static hyper-parameters\n  \['act'\]\s+= 'gelu'\n  \['depth'\]\s+= 3\n", out)
    assert "ties: none" in out
    assert "64 B saved by sharing (1 aliased position)" in out


def test_inspect_foreign_safetensors(tmp_path, capsys):
    from safetensors.numpy import save_file

    path = tmp_path / "foreign.safetensors"
    save_file({"encoder.layer.0.weight": np.zeros((2, 3), np.float32)}, str(path))

    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: safetensors, not written by inox_io\nwritten by another tool: safetensors; no inox_io manifest")
    assert re.search(r"  encoder\.layer\.0\.weight\s+float32\[2, 3\]\s+24 B\n", out)
    assert "(1 array without checksum)" in out

    assert main(["verify", str(path)]) == 1  # nothing verified is no success
    assert capsys.readouterr().err == f"{path}: no checksums (written by another tool: safetensors; no inox_io manifest): nothing verified\n"
    assert main(["verify", "--allow-unchecked", str(path)]) == 0


def test_inspect_torch_save_model_and_hf_files(capsys):
    from test_fixtures import FIXTURES

    assert main(["inspect", str(FIXTURES / "torch" / "tied.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "written by another tool: torch save_model (safetensors with an alias map); no inox_io manifest" in out
    assert re.search(r"ties \(the file's alias map: one stored array under several names\)\n  wte\.weight = lm_head\.weight\n", out)
    assert re.search(r"metadata\n  wte\.weight = 'lm_head\.weight'\n", out), out
    assert "total: 3 arrays, 224 B stored, 192 B saved by sharing (1 aliased position)" in out

    assert main(["inspect", str(FIXTURES / "hf" / "gpt2-tiny-sharded" / "model.safetensors.index.json")]) == 0
    out = capsys.readouterr().out
    assert "written by another tool: Hugging Face index, from PyTorch; no inox_io manifest" in out
    assert re.search(r"metadata\n  total_size = \d+\n  format\s+= 'pt'\n", out), out


def test_verify(seed, tmp_path, capsys):
    assert main(["verify", str(seed)]) == 0
    captured = capsys.readouterr()
    assert captured.out == "OK: 5 arrays, 32.8 KiB, every checksum matches\n"
    assert captured.err == ""  # no progress bar outside a terminal

    damaged = corrupt(seed, tmp_path / "damaged.safetensors")
    assert main(["verify", str(damaged)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert re.search(r"damaged\.safetensors: damaged:\n  \.\S+: checksum mismatch", captured.err)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"\xff" * 8 + b"{}"])
def test_verify_malformed_file(tmp_path, capsys, content):
    for suffix in (".safetensors", ".msgpack"):
        path = tmp_path / f"bad{suffix}"
        path.write_bytes(content)
        assert main(["verify", str(path)]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"inox-io: {path}: ") and "Traceback" not in err


def test_usage_errors(tmp_path, capsys):
    assert main(["verify", str(tmp_path / "missing.safetensors")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "model.pt")]) == 2
    assert "unknown checkpoint format" in capsys.readouterr().err
    assert main([]) == 2
    assert main(["--version"]) == 0
    assert inox_io.__version__ in capsys.readouterr().out


def test_convert_roundtrip(seed, tmp_path, model, capsys):
    packed, back = tmp_path / "seed.msgpack", tmp_path / "back.safetensors"
    assert main(["convert", str(seed), str(packed)]) == 0
    assert main(["convert", str(packed), str(back)]) == 0
    out = capsys.readouterr().out
    assert "to " + str(packed) + " (msgpack): 5 arrays, 32.8 KiB, 2 ties kept" in out

    assert inox_io.inspect(back).to_json() == inox_io.inspect(seed).to_json()
    like = inox_io.abstract(seed_model)
    for path in (packed, back):
        restored = inox_io.load(path, like)
        assert_tied(restored)
        assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), restored, model)))


def test_convert_refusals(seed, tmp_path, capsys):
    dst = tmp_path / "seed.msgpack"
    dst.write_bytes(b"precious")
    assert main(["convert", str(seed), str(dst)]) == 1
    assert "pass --overwrite" in capsys.readouterr().err
    assert dst.read_bytes() == b"precious"
    assert main(["convert", str(seed), str(dst), "--overwrite"]) == 0

    damaged = corrupt(seed, tmp_path / "damaged.safetensors")
    assert main(["convert", str(damaged), str(tmp_path / "copy.msgpack")]) == 1
    assert "damaged, not converted" in capsys.readouterr().err
    assert not (tmp_path / "copy.msgpack").exists()

    assert main(["convert", str(seed), str(tmp_path / "no" / "dir.msgpack")]) == 2


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_terminal(seed, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert main(["convert", str(seed), str(tmp_path / "seed.msgpack")]) == 0
    drawn = sys.stderr.getvalue()
    assert "verifying [" in drawn and "writing [" in drawn and "32.8 KiB / 32.8 KiB" in drawn
    assert drawn.endswith("\r")  # the bar is erased before the report
    assert capsys.readouterr().out.startswith("converted ")


def test_progress_bar_throttles():
    stream = io.StringIO()
    bar = ProgressBar(stream, width=4, interval=3600)
    for done in range(0, 101, 10):
        bar("verify", done, 100)
    frames = stream.getvalue().split("\r")[1:]
    assert frames == ["verifying [....] 0 B / 100 B", "verifying [####] 100 B / 100 B"]


@pytest.mark.parametrize(
    "n, text",
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"), (5 * 2**20, "5.0 MiB"), (2**40, "1.0 TiB")],
)
def test_human_size(n, text):
    assert human_size(n) == text


def test_as_a_process(seed, tmp_path):
    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "inox_io.cli", *args], capture_output=True, text=True, timeout=120, cwd=ROOT
        )

    result = run("inspect", str(seed))
    assert result.returncode == 0, result.stderr
    assert re.search(r"'l1'\s+\.l1\s+aliases \.l2", result.stdout)
    assert re.search(r"'l3\.weight'\s+\.l3\.weight\s+aliases \.l4\.weight", result.stdout)

    result = run("verify", str(corrupt(seed, tmp_path / "damaged.safetensors")))
    assert result.returncode == 1
    assert "checksum mismatch" in result.stderr and "Traceback" not in result.stderr


def test_guide_commands_run(tmp_path, monkeypatch, capsys):
    r"""The shell commands of docs/guide.md work on the files its Python blocks write."""

    guide = (ROOT / "docs" / "guide.md").read_text()
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__guide__"}
    for block in re.findall(r"```python\n(.*?)```", guide, re.S):
        exec(compile(block, "guide.md", "exec"), namespace)

    commands = [
        line
        for block in re.findall(r"```(?:bash|console)\n(.*?)```", guide, re.S)
        for line in block.splitlines()
        if line.startswith("inox-io ")
    ]
    assert commands
    for command in commands:
        expected = 1 if "damaged" in command else 0  # the guide shows one failure on purpose
        assert main(shlex.split(command)[1:]) == expected, command


# ---------------------------------------------------------------------------------------
# CheckpointManager directories


@pytest.fixture
def run_dir(tmp_path, model) -> Path:
    directory = tmp_path / "run"
    with inox_io.CheckpointManager(directory, async_save=False) as manager:
        for step in (10, 20):
            manager.save(step, {"model": model, "data": {"next_batch": step * 32}}, metrics={"loss": 1 / step})
    return directory


def test_steps_lists_complete_steps(run_dir, capsys):
    (run_dir / "30").mkdir()  # not a step: no metadata file (an unfinished one)
    assert main(["steps", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{run_dir}: a CheckpointManager directory, 2 complete steps (latest 20)\n")
    assert re.search(r"\n\s+10  \S+  loss=0\.1\s+model, data\s+\d+\.\d KiB\n", out), out
    assert re.search(r"\n\s+20  \S+  loss=0\.05\s+model, data\s+\d+\.\d KiB\n", out), out
    assert f"inox-io inspect {run_dir / '20'} describes a step" in out

    assert main(["inspect", str(run_dir)]) == 0  # a manager directory: its steps
    assert capsys.readouterr().out == out

    assert main(["steps", "--json", str(run_dir)]) == 0
    records = json.loads(capsys.readouterr().out)
    assert records["directory"] == str(run_dir) and [r["step"] for r in records["steps"]] == [10, 20]
    step = records["steps"][1]
    assert step["metrics"] == {"loss": 0.05} and step["items"]["data"] == {"json": {"next_batch": 640}}
    assert step["items"]["model"]["bytes"] == disk_bytes(run_dir / "20" / step["items"]["model"]["file"])
    assert step["bytes"] == disk_bytes(run_dir / "20") and saved_at(step["time"]) != "unknown"


def test_inspect_and_verify_a_step(run_dir, capsys):
    step = run_dir / "20"
    assert main(["inspect", str(step)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{step}: step 20 of the CheckpointManager directory {run_dir}, saved ")
    assert "metrics: loss=0.05" in out and re.search(r"data\s+json\s+\{\"next_batch\": 640\}", out)
    assert f"{step / 'model.safetensors'}: inox_io format v1 (safetensors)" in out  # the item's own report

    assert main(["inspect", "--json", str(step)]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["items"]["model"]["manifest"]["format"] == "inox_io"

    assert main(["verify", str(step)]) == 0
    assert capsys.readouterr().out.startswith("OK: step 20, 1 array item: 5 arrays, 32.8 KiB, every checksum matches")


def test_manager_paths_where_a_checkpoint_is_expected(run_dir, tmp_path, capsys):
    assert main(["verify", str(run_dir)]) == 2
    assert f"is a CheckpointManager directory; verify one of its steps: inox-io verify {run_dir / 'STEP'}" in capsys.readouterr().err
    assert main(["convert", str(run_dir / "20"), str(tmp_path / "m.msgpack")]) == 2
    assert f"convert one of its items: {run_dir / '20' / 'model.safetensors'}" in capsys.readouterr().err
    assert main(["steps", str(run_dir / "20")]) == 2
    assert f"is a step, not a CheckpointManager directory; inox-io steps {run_dir} lists its steps" in capsys.readouterr().err

    inox_io.save(tmp_path / "ckpt", {"w": jnp.ones(2)})
    assert main(["steps", str(tmp_path / "ckpt")]) == 2
    assert "is a checkpoint, not a CheckpointManager directory; inox-io inspect" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["steps", str(tmp_path / "empty")]) == 1
    assert "not a CheckpointManager directory (no complete step, no writer's lock file)" in capsys.readouterr().err
    assert main(["steps", str(tmp_path / "nowhere")]) == 2


# ---------------------------------------------------------------------------------------
# The command as a process: start-up, pipes, Ctrl-C


def test_help_imports_no_jax():
    code = "import sys; from inox_io.cli import main; main(['--help']); print('jax' in sys.modules, file=sys.stderr)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0 and "inox-io" in result.stdout
    assert result.stderr.strip() == "False"


def test_a_reader_that_leaves_early_is_quiet(seed):
    process = subprocess.Popen(
        [sys.executable, "-m", "inox_io.cli", "inspect", str(seed)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    process.stdout.close()  # as `| head` does once it has what it wants
    _, err = process.communicate(timeout=120)
    assert process.returncode == 141 and err == b""


def test_ctrl_c_is_one_line(seed, tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(inox_io.api, "convert", interrupted)
    assert main(["convert", str(seed), str(tmp_path / "seed.msgpack")]) == 130
    assert capsys.readouterr().err == "inox-io: interrupted\n"


def test_ctrl_c_in_a_process(tmp_path):
    fifo = tmp_path / "stdin"
    os.mkfifo(fifo)
    # The command waits on its terminal-like input while it reads nothing else: Ctrl-C
    # reaches it inside main (after JAX is imported by the command).
    code = (
        "import sys, inox_io.cli as c\n"
        "def run(args):\n"
        "    import inox_io.api\n"
        "    print('ready', flush=True)\n"
        "    sys.stdin.read()\n"
        "c.run_verify = run\n"
        f"sys.exit(c.main(['verify', {str(tmp_path / 'x.safetensors')!r}]))\n"
    )
    (tmp_path / "x.safetensors").write_bytes(b"")
    with open(fifo, "w+b", buffering=0) as hold:
        process = subprocess.Popen(
            [sys.executable, "-c", code], stdin=open(fifo, "rb"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT
        )
        assert process.stdout.readline() == b"ready\n"
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 130 and err.decode() == "inox-io: interrupted\n"


# ---------------------------------------------------------------------------------------
# Every layout: progress, keys


@pytest.mark.parametrize("dst", ["copy.safetensors", "copy.msgpack", "copy.safetensors.index.json", "copy", "orbax"])
def test_progress_moves_while_each_layout_writes(seed, tmp_path, monkeypatch, dst):
    # orbax's writer reports nothing: its bytes on disk are watched, here every 1 ms.
    monkeypatch.setattr(orbax_dir, "reporting_growth", functools.partial(orbax_dir.reporting_growth, interval=0.001))
    calls = []
    fmt = "orbax" if dst == "orbax" else None
    inox_io.convert(seed, tmp_path / dst, format=fmt, progress=lambda *call: calls.append(call))

    total = inox_io.inspect(seed).nbytes
    written = [done for stage, done, _ in calls if stage == "write"]
    assert len(written) >= 3, calls  # the start, the writer's own reports, the end
    assert written == sorted(written) and written[0] == 0 and written[-1] == total


@pytest.mark.parametrize("dst", ["keys.safetensors", "keys.msgpack", "keys.safetensors.index.json", "keys", "orbax"])
def test_every_key_impl_through_every_layout(tmp_path, dst, capsys):
    from test_fixtures import dtype_zoo_like, fixture

    args = ["convert", str(fixture("dtypes", "safetensors")), str(tmp_path / dst)]
    assert main(args + (["--format", "orbax"] if dst == "orbax" else [])) == 0, capsys.readouterr().err
    restored = inox_io.load(tmp_path / dst, dtype_zoo_like())
    assert_trees_bits_equal(restored.keys, dtype_zoo().keys)
    for name in ("threefry", "rbg", "unsafe_rbg"):
        assert jax.random.key_impl(restored.keys[name]) == jax.random.key_impl(dtype_zoo().keys[name])


def test_inspect_a_named_export_shows_the_declared_ties(model, tmp_path, capsys):
    path = tmp_path / "named.safetensors"
    inox_io.save(path, model, names=inox_io.torch_names)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"ties \(explicit sharing, as declared in the tree saved\)\n  scope <root>\n    'l1'\s+\.l1\s+aliases \.l2\n", out), out
    assert re.search(r"shared names \(one stored array under several names\)\n  l2\.bias\s+= l1\.bias\n", out), out
    assert "implicit sharing" not in out
