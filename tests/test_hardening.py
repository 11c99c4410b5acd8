"""Bad input, as a new user would give it: one line on stderr, exit 2, nothing written (issue "Hardening").

The table runs the command line in this process (torch is imported once, so each case takes well under a second);
the checks that need a fresh interpreter (--help without torch) run it as a subprocess."""

import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from gandissect.cli import main

from .conftest import REPO, SHIPPED_SEGMENTER

DISSECT_YAML = REPO / "experiments" / "scenes" / "dissect.yaml"
SEGMENTER_YAML = REPO / "experiments" / "scenes" / "segmenter.yaml"
GAN_YAML = REPO / "experiments" / "scenes" / "gan.yaml"
NAN_TENSOR = "layer1.conv.weight"


@pytest.fixture(autouse=True)
def from_the_repository(monkeypatch):
    monkeypatch.chdir(REPO)  # the default configs and checkpoints are relative paths, as for `make demo`


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """The files the table refers to as {in}/...: a small generator, broken copies of it, a file, a folder, images."""
    from gandissect.models.progan import ProGANGenerator
    from gandissect.models.segmenter import SceneSegmenter

    made = tmp_path_factory.mktemp("inputs")
    generator = ProGANGenerator(64, widths=[16, 16, 16, 16, 8, 8, 8, 8, 8, 8], latent_dim=8)
    generator.save(made / "g.safetensors")
    with torch.no_grad():
        generator.state_dict()[NAN_TENSOR].view(-1)[0] = float("nan")
    generator.save(made / "nan.safetensors")
    torch.save(generator.state_dict(), made / "nan.pth")
    (made / "afile").write_text("not a folder\n")
    (made / "scenes.yaml").write_text("n: 0\nstats_n: 5\n")
    (made / "adir").mkdir()
    (made / "adir.json").mkdir()  # where `generate --out adir.png` would write its record
    for folder, sizes in (("truncated", [16, 16, 16]), ("mixed", [16, 16, 8])):
        (made / folder).mkdir()
        for i, size in enumerate(sizes):
            pixels = np.random.RandomState(i).randint(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(made / folder / f"{i}.png")
    features = SceneSegmenter.load(SHIPPED_SEGMENTER).widths[-1]  # FD-scenes statistics have this many
    np.savez(made / "nan.npz", mu=np.full(features, np.nan), sigma=np.eye(features))
    png = made / "truncated" / "2.png"
    png.write_bytes(png.read_bytes()[:len(png.read_bytes()) // 2])
    return made


@pytest.fixture
def inputs(made, tmp_path):
    return {"tmp": tmp_path, "in": made, "gen": made / "g.safetensors", "seg": SHIPPED_SEGMENTER,
            "yaml": DISSECT_YAML, "segyaml": SEGMENTER_YAML, "ganyaml": GAN_YAML}


def _listing(*folders) -> list[str]:
    return sorted(str(p) for folder in folders for p in folder.rglob("*"))


NO_LOGIN = {"WANDB_API_KEY": None, "NETRC": "{tmp}/no-netrc", "WANDB_BASE_URL": None}

# (id, command line, environment, fragments of the one error line)
CASES = [
    ("set-n-abc", "dissect --set n=abc", {}, ["n: Value 'abc'", "Integer"]),
    ("set-quantile-abc", "dissect --set quantile=abc", {}, ["quantile: Value 'abc'", "Float"]),
    ("set-k-abc", "repair --set k=abc", {}, ["k: Value 'abc'"]),
    ("set-n-float", "dissect --set n=64.5", {}, ["n: Value '64.5'", "Integer"]),
    ("set-name-empty", "dissect --set name=", {}, ["name: no value given"]),
    ("set-name-slash", "dissect --set name=a/b", {}, ["name='a/b'", "no '/'"]),
    ("set-quantile-range", "dissect --set quantile=1.5", {}, ["quantile=1.5", "between 0 and 1"]),
    ("set-seed-negative", "dissect --set seed=-2", {}, ["seed=-2: expected a seed from 0 to"]),
    ("set-nested-seed-too-big", "repair --set artifact.check_seed=5000000000", {}, ["artifact.check_seed=5000000000"]),
    ("scenes-seed-negative", "scenes --seed -1 --n 1 --out {tmp}/s", {}, ["--seed=-1: expected a seed"]),
    ("eval-real-seed-negative", "eval gan --checkpoint {gen} --real-seed -5", {}, ["--real-seed=-5"]),
    ("devices-precision", "dissect --set devices.precision=7", {}, ["devices (", "Precision 7 is invalid"]),
    ("devices-strategy", "ace --set devices.strategy=nonsense", {}, ["invalid strategy name"]),
    ("train-batch-size-0", "train segmenter --config {segyaml} --set data.batch_size=0", {}, ["batch_size=0"]),
    ("train-gan-lr-negative", "train gan --config {ganyaml} --set optim.g_lr=-1", {},
     ["g_lr=-1.0: expected a number > 0"]),
    ("train-gan-betas", "train gan --config {ganyaml} --set optim.betas=[0.5]", {}, ["betas=[0.5]"]),
    ("train-gan-fd-n-1", "train gan --config {ganyaml} --set monitor.fd_n=1", {}, ["monitor.fd_n=1"]),
    ("dissect-iou-threshold", "dissect --set iou_threshold=2", {}, ["iou_threshold=2.0"]),
    ("repair-plant-quantile", "repair --set plant.quantile=1.5", {}, ["plant: expected 0 < quantile < 1"]),
    ("dissect-layers-empty", ["dissect", "--layers", ""], {}, ["layers=[]", "at least one layer"]),
    ("dissect-n-0", "dissect --n 0", {}, ["n=0: expected a positive integer"]),
    ("generate-n-0", "generate --checkpoint {gen} --n 0 --out {tmp}/g.png", {}, ["--n 0: expected a positive"]),
    ("scenes-n-0", "scenes --n 0 --out {tmp}/s", {}, ["--n 0: expected a positive"]),
    ("eval-segmenter-n-0", "eval segmenter --checkpoint {seg} --n 0", {}, ["--n 0: expected a positive"]),
    ("fid-score-n-negative", "fid score --checkpoint {gen} --stats {tmp}/none.npz --n -3", {},
     ["--n -3", "n >= 2"]),
    ("fid-score-nan-statistics", "fid score --checkpoint {gen} --stats {in}/nan.npz --n 4", {},
     ["statistics file {in}/nan.npz: real statistics hold non-finite values"]),
    ("yaml-as-generator", "generate --checkpoint {yaml} --out {tmp}/g.png", {},
     ["dissect.yaml is corrupt or not a PyTorch state dict file", "text file", "a config?"]),
    ("yaml-as-segmenter", "eval segmenter --checkpoint {segyaml} --n 2", {},
     ["segmenter.yaml is not a safetensors file", "a config?", "expected a 'scene-segmenter' checkpoint"]),
    ("nan-safetensors", "generate --checkpoint {in}/nan.safetensors --out {tmp}/g.png", {},
     ["nan.safetensors holds non-finite values", NAN_TENSOR]),
    ("nan-pth", "generate --checkpoint {in}/nan.pth --out {tmp}/g.png", {},
     ["nan.pth holds non-finite values", NAN_TENSOR]),
    ("generate-out-under-file", "generate --checkpoint {gen} --out {in}/afile/g.png", {},
     ["--out {in}/afile/g.png: {in}/afile is a file, not a directory"]),
    ("generate-out-is-dir", "generate --checkpoint {gen} --out {in}/adir", {},
     ["--out {in}/adir is a directory; expected a file name"]),
    ("generate-out-not-png", "generate --checkpoint {gen} --out {tmp}/g.json", {}, ["expected a .png file name"]),
    ("generate-record-is-dir", "generate --checkpoint {gen} --out {in}/adir.png", {},
     ["--out's record {in}/adir.json is a directory"]),
    ("scenes-out-is-file", "scenes --n 2 --out {in}/afile", {}, ["--out {in}/afile is a file, not a directory"]),
    ("scenes-out-under-file", "scenes --n 2 --out {in}/afile/s", {}, ["{in}/afile is a file, not a directory"]),
    ("fid-stats-out-is-dir", "fid stats --n 2 --out {in}/adir", {}, ["--out {in}/adir is a directory"]),
    ("fid-stats-truncated-png", "fid stats --data {in}/truncated --n 3 --out {tmp}/r.npz", {},
     ["image {in}/truncated/2.png cannot be read", "truncated"]),
    ("fid-stats-mixed-sizes", "fid stats --data {in}/mixed --n 3 --out {tmp}/r.npz", {},
     ["{in}/mixed/2.png is 8x8", "must share one size"]),
    ("eval-name-empty", ["eval", "segmenter", "--checkpoint", "{seg}", "--name", ""], {}, ["name=''"]),
    ("fid-score-name-dotdot", "fid score --checkpoint {gen} --stats {in}/nan.npz --name ..", {}, ["name='..'"]),
    ("runs-root-under-file", "dissect --n 2", {"GANDISSECT_RUNS": "{in}/afile/runs"},
     ["run directory {in}/afile/runs/dissect: {in}/afile is a file, not a directory"]),
    ("eval-runs-root-is-file", "eval segmenter --checkpoint {seg} --n 2", {"GANDISSECT_RUNS": "{in}/afile"},
     ["run directory {in}/afile/eval-segmenter: {in}/afile is a file"]),
    ("wandb-online-dissect", "dissect --set wandb.mode=online", NO_LOGIN, ["wandb.mode=online: no W&B login"]),
    ("wandb-online-demo", "demo --set wandb.mode=online", NO_LOGIN, ["no W&B login", "api.wandb.ai"]),
    ("demo-bad-ace-set", ["demo", "--set", "ace_set=[n=abc]"], {}, ["ace.yaml: n: Value 'abc'"]),
    ("demo-bad-repair-set", ["demo", "--set", "repair_set=[fd_m=3]"], {}, ["unknown config key fd_m", "fd_n"]),
    ("demo-online-in-ace-set", ["demo", "--set", "ace_set=[wandb.mode=online]"], NO_LOGIN, ["no W&B login"]),
    ("wandb-online-train", "train segmenter --config {segyaml} --set wandb.mode=online", NO_LOGIN,
     ["no W&B login"]),
    # the common flags set the same keys everywhere; every command takes --config and --set
    ("ace-n-0", "ace --n 0", {}, ["n=0: expected a positive integer"]),
    ("ace-seed-negative", "ace --seed -1", {}, ["--seed=-1: expected a seed"]),
    ("repair-n-is-fd-n", "repair --n 0", {}, ["fd_n=0: expected a positive integer"]),
    ("repair-seed-is-fd-seed", "repair --seed 5000000000", {}, ["fd_seed=5000000000: expected a seed"]),
    ("demo-n-0", "demo --n 0", {}, ["n=0: expected a positive integer"]),
    ("train-seed-negative", "train gan --config {ganyaml} --seed -3", {}, ["--seed=-3: expected a seed"]),
    ("dissect-checkpoint", "dissect --checkpoint {in}/nan.safetensors", {}, ["nan.safetensors holds non-finite"]),
    ("ace-checkpoint", "ace --checkpoint {in}/nan.safetensors", {}, ["nan.safetensors holds non-finite"]),
    ("repair-checkpoint", "repair --checkpoint {in}/nan.safetensors", {}, ["nan.safetensors holds non-finite"]),
    ("dissect-layer-alias", "dissect --layer layer99 --checkpoint {gen}", {}, ["unknown layer 'layer99'", "layer4"]),
    ("scenes-config-n-0", "scenes --config {in}/scenes.yaml --out {tmp}/s", {}, ["--n 0: expected a positive"]),
    ("scenes-set-unknown-key", "scenes --set colour=red --out {tmp}/s", {},
     ["unknown config key colour", "expected one of: n, seed, size, out, class_name, stats_n"]),
    ("scenes-no-out", "scenes --n 2", {}, ["--out required (or out in --config / --set)"]),
    ("generate-set-n-abc", "generate --checkpoint {gen} --set n=abc --out {tmp}/g.png", {}, ["n: Value 'abc'"]),
    ("generate-no-checkpoint-no-out", "generate --n 2", {}, ["--checkpoint, --out required"]),
    ("eval-gan-config-missing", "eval gan --config {tmp}/none.yaml --checkpoint {gen}", {},
     ["config file not found: {tmp}/none.yaml"]),
    ("eval-segmenter-set-n-0", "eval segmenter --checkpoint {seg} --set n=0", {}, ["--n 0: expected a positive"]),
    ("fid-stats-set-out-is-dir", "fid stats --n 2 --set out={in}/adir", {}, ["--out {in}/adir is a directory"]),
    ("fid-score-no-stats", "fid score --checkpoint {gen}", {}, ["--stats required"]),
]


def _fill(text: str, inputs: dict) -> str:
    return text.format(**inputs)


@pytest.mark.parametrize("command, env, fragments", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_one_line_exit_2_and_nothing_written(command, env, fragments, inputs, isolated_runs,
                                                          monkeypatch, capfd):
    argv = command.split() if isinstance(command, str) else command
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, _fill(value, inputs))
    before = _listing(inputs["tmp"], inputs["in"])
    code = main([_fill(arg, inputs) for arg in argv])
    out, err = capfd.readouterr()
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("gandissect: error: "), (code, err[-3000:])
    for fragment in fragments:
        assert _fill(fragment, inputs) in lines[0]
    assert out == ""
    assert not isolated_runs.exists()  # no run directory, no config.yaml
    assert _listing(inputs["tmp"], inputs["in"]) == before  # no output, no probe file left


def test_a_directory_that_cannot_be_written_is_refused_before_work(tmp_path, monkeypatch):
    from gandissect import io
    from gandissect.errors import BadValueError

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(io.tempfile, "mkstemp", read_only)  # as on a read-only filesystem (also for root)
    with pytest.raises(BadValueError, match=r"--out .*out/x cannot be written \(Read-only file system"):
        io.check_writable_dir(tmp_path / "out" / "x", "--out")
    with pytest.raises(BadValueError, match=r"--out .*grid.png cannot be written"):
        io.check_writable_file(tmp_path / "grid.png", "--out")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_directory_is_refused(tmp_path, capfd):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        code = main(["scenes", "--n", "2", "--out", str(locked / "s")])
    finally:
        locked.chmod(0o755)
    assert code == 2 and "cannot be written (Permission denied" in capfd.readouterr().err


def test_a_writable_directory_passes_and_is_left_as_it_was(tmp_path):
    from gandissect.io import check_writable_dir, check_writable_file

    check_writable_dir(tmp_path / "new" / "deeper")
    check_writable_file(tmp_path / "grid.png")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("env, netrc, refused", [
    ({}, None, True),
    ({"WANDB_API_KEY": "x" * 40}, None, False),
    ({}, "machine api.wandb.ai\n  login user\n  password " + "x" * 40 + "\n", False),
    ({}, "machine example.org\n  login user\n  password secret\n", True),
    ({"WANDB_BASE_URL": "https://wandb.example.org"}, "machine wandb.example.org login u password p\n", False),
    ({}, "this is not a netrc file \"", True),
], ids=["nothing", "api-key", "netrc", "netrc-other-host", "own-server", "broken-netrc"])
def test_wandb_online_needs_a_login(env, netrc, refused, tmp_path, monkeypatch):
    from gandissect.config import WandbConfig
    from gandissect.core.runs import check_wandb_login
    from gandissect.errors import ConfigError

    for name in ("WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    if netrc is not None:
        (tmp_path / "netrc").write_text(netrc)
        (tmp_path / "netrc").chmod(0o600)
    check_wandb_login(WandbConfig(mode="offline"))  # offline and disabled need nothing
    if refused:
        with pytest.raises(ConfigError, match="no W&B login found"):
            check_wandb_login(WandbConfig(mode="online"))
    else:
        check_wandb_login(WandbConfig(mode="online"))


def test_checkpoints_with_non_finite_tensors_are_refused_by_name(tmp_path):
    from gandissect.checkpoint import read_checkpoint, read_state_dict, save_checkpoint
    from gandissect.errors import CheckpointError

    good, bad = torch.ones(3), torch.tensor([1.0, float("inf")])
    save_checkpoint(tmp_path / "a.safetensors", "toy", {}, {"fine": good, "bias": bad, "steps": torch.arange(3)})
    with pytest.raises(CheckpointError, match=r"a.safetensors holds non-finite values \(NaN or Inf\) in bias$"):
        read_checkpoint(tmp_path / "a.safetensors", "toy")
    torch.save({"state_dict": {"w": torch.full((2,), float("nan"))}, "epoch": 3}, tmp_path / "b.pth")
    with pytest.raises(CheckpointError, match="b.pth holds non-finite values .* in w$"):
        read_state_dict(tmp_path / "b.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a state dict")
    with pytest.raises(CheckpointError, match="Inception weights .*junk.pth is corrupt or not a PyTorch state dict"):
        read_state_dict(tmp_path / "junk.pth", "Inception weights")
    torch.save({"w": good}, tmp_path / "fine.pth")
    assert torch.equal(read_state_dict(tmp_path / "fine.pth")["w"], good)


def test_json_never_holds_nan_or_infinity(tmp_path):
    from gandissect.io import json_text, write_json

    value = {"fd": float("nan"), "interval": (float("-inf"), 1.5), "kid": np.float64("inf"), "n": 3,
             "nested": [{"x": float("inf")}], "ok": 0.25, "name": "NaN"}
    expected = {"fd": None, "interval": [None, 1.5], "kid": None, "n": 3, "nested": [{"x": None}], "ok": 0.25,
                "name": "NaN"}
    text = write_json(tmp_path / "r.json", value).read_text()
    assert "NaN," not in text and "Infinity" not in text
    assert json.loads(text, parse_constant=lambda token: pytest.fail(f"JSON token {token}")) == expected
    assert json.loads(json_text(value)) == expected


def test_a_dissection_of_few_images_warns_on_stderr_and_in_its_json(isolated_runs, capfd):
    code = main(["dissect", "--n", "1", "--set", "wandb.mode=disabled", "--set", "top_k=1"])
    out, err = capfd.readouterr()
    assert code == 0, err[-3000:]
    assert "gandissect: warning: n=1 images is below the minimum of 100 for a dissection" in err
    assert "Tip:" not in err and "GPU available" not in err  # Lightning's notes, without --verbose
    warnings = json.loads((isolated_runs / "dissect" / "dissect.json").read_text())["warnings"]
    assert len(warnings) == 1 and "below the minimum of 100" in warnings[0]
    assert json.loads(out)["warnings"] == warnings
    assert "Warning: n=1 images" in (isolated_runs / "dissect" / "index.html").read_text()


def _fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)


def test_help_and_version_answer_without_importing_torch():
    done = _fresh("import sys\nfrom gandissect.cli import main\n"
                  "for argv in (['--help'], ['dissect', '--help'], ['scenes', '--help'], ['--version']):\n"
                  "    try:\n        main(argv)\n    except SystemExit as end:\n        assert end.code == 0\n"
                  "assert 'torch' not in sys.modules, 'torch was imported'\n")
    assert done.returncode == 0, done.stderr[-2000:]
    from gandissect import __version__

    assert f"gandissect {__version__}" in done.stdout and "--layers" in done.stdout
    assert "(default: experiments/scenes/dissect.yaml)" in done.stdout and "(default: 1000)" in done.stdout


def test_a_refused_config_does_not_import_torch():
    done = _fresh("import sys\nfrom gandissect.cli import main\n"
                  "assert main(['dissect', '--set', 'n=abc']) == 2\nassert 'torch' not in sys.modules\n")
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("repaired, better, higher", [(0.8947, False, 0), (0.8557, False, 2), (0.8, True, 2)])
def test_the_repair_verdict_and_its_colour_follow_the_numbers(repaired, better, higher):
    from gandissect.report.repair import fd_chart, fd_verdict

    # the fresh-clone numbers: 0.8947 repaired, 0.8557 original, 0.8794 random
    fd = {"name": "FD-scenes", "n": 100, "original": 0.8557, "repaired": repaired, "random": [0.8794, 0.8701],
          "random_mean": 0.87475, "random_std": 0.0066}
    text, verdict = fd_verdict(fd)
    assert verdict is better
    assert ("is lower (better)" if better else "is not lower (no better)") in text
    assert f"{higher} of 2 random ablations of as many units have a higher one" in text
    picture = fd_chart(fd)
    green = np.all(picture == [0x55, 0xA8, 0x68], axis=-1).sum()
    red = np.all(picture == [0xC4, 0x4E, 0x52], axis=-1).sum()
    assert (green > 100, red > 100) == (better, not better)
    assert fd_verdict({**fd, "repaired": None}) == ("nothing was ablated, so there is no repair to compare", None)


@pytest.mark.parametrize("repaired, title", [(0.8947, "FD not better than the original"),
                                             (0.8, "FD better than the original")])
def test_the_demo_titles_its_repair_by_the_verdict(repaired, title, isolated_runs, monkeypatch):
    """The demo's repair section, with the repair pipeline itself replaced by its result (the full demo is tested in
    test_cli)."""
    from gandissect import demo
    from gandissect.config import DemoConfig, WandbConfig

    fd = {"name": "FD-scenes", "n": 100, "original": 0.8557, "repaired": repaired, "random": [0.8794],
          "random_mean": 0.8794, "random_std": None}
    monkeypatch.setattr(demo, "run_repair_pipeline", lambda cfg, run_dir: {"fd": fd, "chosen_units": [3, 5]})
    monkeypatch.setattr(demo.repair, "summary", lambda result, run_dir: {"fd_repaired": result["fd"]["repaired"]})
    cfg = DemoConfig(n=2, stats_n=2, dissect_n=0, ace_config=None, wandb=WandbConfig(mode="disabled"))
    summary = demo.run_demo(cfg)
    assert summary["repair"]["fd_repaired"] == repaired
    html = (isolated_runs / "demo" / "index.html").read_text()
    assert f"Repair: artifact units switched off, {title}" in html and "proven by FD" not in html
    assert "<b>Verdict:</b> the repaired generator's FD-scenes is" in html


def _commands(parser, prefix=""):
    """Every leaf command of the parser, as ("eval gan", its parser)."""
    import argparse

    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    own = [(prefix.strip(), parser)] if not subparsers or not subparsers[0].required else []  # `paint` runs alone too
    if not subparsers:
        return own
    return own + [found for name, sub in subparsers[0].choices.items() for found in _commands(sub, f"{prefix} {name}")]


ALL = {"demo", "dissect", "ace", "repair", "scenes", "train segmenter", "train gan", "eval segmenter", "eval gan",
       "generate", "fid stats", "fid score", "paint", "paint prepare", "rate summary", "layers", "compare"}
COMMON = {  # flag: the commands that take it (the others have no such setting)
    "--config": ALL, "--set": ALL, "--seed": ALL - {"paint", "paint prepare", "rate summary", "layers", "compare"},
    "--n": ALL - {"train segmenter", "train gan", "paint", "rate summary", "layers", "compare"},
    "--name": ALL - {"scenes", "generate", "paint", "rate summary", "layers"},  # these write into --out, or nothing
    "--checkpoint": ALL - {"scenes", "fid stats", "train segmenter", "train gan", "rate summary", "compare"},
    "--out": {"scenes", "generate", "fid stats", "paint prepare"},
    "--layer": {"demo", "dissect", "ace", "repair", "paint prepare"},
}


def test_every_command_takes_config_set_and_the_common_flags_by_the_same_names():
    from gandissect.cli import build_parser

    commands = dict(_commands(build_parser()))
    assert set(commands) == ALL
    options = {name: {o for action in p._actions for o in action.option_strings} for name, p in commands.items()}
    for flag, having in COMMON.items():
        assert {name for name in ALL if flag in options[name]} == having, flag
    assert "--layers" in options["dissect"]


@pytest.mark.parametrize("argv, expected", [
    (["scenes", "--config", "{in}/scenes.yaml", "--set", "n=3", "--set", "seed=7", "--seed", "9", "--out", "o"],
     {"n": 3, "seed": 9, "stats_n": 5, "out": "o", "size": 64}),  # the file < --set < a flag; defaults for the rest
    (["dissect", "--set", "n=50", "--n", "60", "--layer", "layer3,layer5", "--checkpoint", "g.safetensors",
      "--seed", "2", "--name", "x"], {"n": 60, "layers": ["layer3", "layer5"], "generator": "g.safetensors",
                                      "seed": 2, "name": "x", "quantile": 0.99}),
    (["ace", "--n", "32", "--class", "dome", "--seed", "3", "--layer", "layer5"],
     {"n": 32, "class_name": "dome", "seed": 3, "layer": "layer5", "steps": 500}),
    (["repair", "--n", "100", "--seed", "4", "--layer", "layer6", "--checkpoint", "g.safetensors"],
     {"fd_n": 100, "fd_seed": 4, "layer": "layer6", "generator": "g.safetensors"}),
    (["demo", "--n", "8", "--seed", "1", "--layer", "layer5", "--checkpoint", "g.safetensors", "--name", "d"],
     {"n": 8, "seed": 1, "dissect_layer": "layer5", "generator": "g.safetensors", "name": "d"}),
    (["train", "gan", "--config", "{ganyaml}", "--seed", "4", "--name", "g2"], {"seed": 4, "name": "g2"}),
    (["fid", "score", "--checkpoint", "v2: best #1.safetensors", "--stats", "r.npz", "--set", "batch_size=8"],
     {"checkpoint": "v2: best #1.safetensors", "stats": "r.npz", "batch_size": 8, "n": 10000}),
], ids=["scenes", "dissect", "ace", "repair", "demo", "train-gan", "fid-score"])
def test_flags_set_their_config_keys_over_set_over_the_config_file(argv, expected, inputs):
    from gandissect.cli import _config, build_parser

    args = build_parser().parse_args([_fill(arg, inputs) for arg in argv])
    cfg = _config(args.config_class, args)
    assert {key: getattr(cfg, key) for key in expected} == expected
