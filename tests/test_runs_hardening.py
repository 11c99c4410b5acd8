"""Run directories that cannot be mixed up (issue "Hardening"): one owner per run directory, a finished run's
settings kept, one W&B run per run directory, non-finite images stopped, resume after a kill at any point."""

import concurrent.futures
import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from gandissect.cli import main
from gandissect.core.wandb_files import read_offline_history

from .conftest import REPO, SHIPPED_SEGMENTER, console_script

SHIPPED_GAN = REPO / "checkpoints" / "scene_gan_generator.safetensors"


@pytest.fixture(autouse=True)
def from_the_repository(monkeypatch):
    monkeypatch.chdir(REPO)  # the default configs and checkpoints are relative paths


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A small untrained generator (16 units in layer4: a dissection of it takes well under a second)."""
    from gandissect.models.progan import ProGANGenerator

    path = tmp_path_factory.mktemp("tiny") / "g.safetensors"
    ProGANGenerator(64, widths=[16, 16, 16, 16, 8, 8, 8, 8, 8, 8], latent_dim=8).save(path)
    return path


def _listing(folder) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*"))


def _one_error_line(capfd) -> str:
    out, err = capfd.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gandissect: error: ") and out == "", err[-3000:]
    return lines[0]


@pytest.fixture
def holder(tmp_path):
    """Another process that owns a run directory (taken through the same API as a run), until the test ends."""
    started = []

    def hold(run_dir):
        code = textwrap.dedent(f"""
            import sys, time
            from gandissect.core.runs import lock_run
            lock_run({str(run_dir)!r})
            print("held", flush=True)
            sys.stdin.read()  # until the test closes stdin
        """)
        process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   text=True)
        started.append(process)
        assert process.stdout.readline() == "held\n"
        return process.pid

    yield hold
    for process in started:
        process.stdin.close()
        process.wait(timeout=30)


# (command line, the run directory it writes, relative to GANDISSECT_RUNS unless absolute)
BUSY = [
    ("dissect --n 8 --set name=taken", "taken"),
    ("ace --set name=taken", "taken"),
    ("repair --set name=taken", "taken"),
    ("demo --set name=taken", "taken"),
    ("train segmenter --config experiments/scenes/segmenter.yaml --set name=taken", "taken"),
    (f"eval segmenter --checkpoint {SHIPPED_SEGMENTER} --n 2 --name taken", "taken"),
    (f"eval gan --checkpoint {SHIPPED_GAN} --n 2 --name taken", "taken"),
    ("fid stats --n 2 --out {tmp}/r.npz --name taken", "taken"),
    (f"fid score --checkpoint {SHIPPED_GAN} --stats {{tmp}}/r.npz --n 2 --name taken", "taken"),
    ("scenes --n 2 --out {tmp}/scenes", "{tmp}/scenes"),
]


@pytest.mark.parametrize("command, run_dir", BUSY, ids=[c.split(" --")[0].replace(" ", "-") for c, _ in BUSY])
def test_a_second_run_under_a_taken_name_is_refused_naming_the_owner(command, run_dir, holder, isolated_runs,
                                                                     tmp_path, capfd):
    run_dir = run_dir.format(tmp=tmp_path)
    run_dir = isolated_runs / run_dir if not run_dir.startswith("/") else run_dir
    pid = holder(run_dir)
    before = _listing(tmp_path)
    assert main(command.format(tmp=tmp_path).split()) == 2
    assert _one_error_line(capfd) == (f"gandissect: error: run directory {run_dir} is in use by another gandissect "
                                      f"run (PID {pid}); wait for it to end or use another name")
    assert _listing(tmp_path) == before  # nothing written


def _take_in_another_process(run_dir, then="") -> subprocess.CompletedProcess:
    code = f"from gandissect.core.runs import lock_run\nlock_run({str(run_dir)!r})\n{then}"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_the_owner_is_a_process_and_the_lock_ends_with_it(tmp_path):
    from gandissect.core.runs import lock_run, release_runs

    run_dir = tmp_path / "run"
    lock_run(run_dir)
    lock_run(run_dir)  # again in the owning process (a step inside a pipeline): still its own
    assert (run_dir / ".lock").read_text() == f"{os.getpid()}\n"
    refused = _take_in_another_process(run_dir)
    assert refused.returncode == 1 and f"RunBusyError: run directory {run_dir} is in use by another gandissect run " \
        f"(PID {os.getpid()})" in refused.stderr
    release_runs()
    killed = _take_in_another_process(run_dir, "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    assert killed.returncode == -signal.SIGKILL
    lock_run(run_dir)  # the killed owner left no stale lock behind
    assert (run_dir / ".lock").read_text() == f"{os.getpid()}\n"


def test_a_rerun_continues_the_same_wandb_run_and_leaves_no_empty_staging_folders(tiny, isolated_runs, capfd):
    run_dir = isolated_runs / "twice"
    for _ in range(2):
        assert main(["dissect", "--n", "8", "--set", "top_k=1", "--set", "name=twice", "--set", f"generator={tiny}",
                     "--set", "wandb.mode=offline"]) == 0, capfd.readouterr().err[-3000:]
    run_id = (run_dir / "wandb_id.txt").read_text().strip()
    offline = sorted(p.name for p in (run_dir / "wandb").glob("offline-run-*"))
    # W&B names a run's folder by the second it started and the id; a second start within that second adds "-1"
    assert len(offline) == 2 and all(re.fullmatch(rf"offline-run-\d{{8}}_\d{{6}}-{run_id}(-\d+)?", name)
                                     for name in offline), (run_id, offline)
    assert len(read_offline_history(run_dir)) == 2  # both attempts' rows, in the one W&B run
    # W&B's artifact staging area (copies of the logged tables, for `wandb sync`) is inside wandb/, and W&B left
    # no empty folder there
    assert not (run_dir / "artifacts").exists()
    staged = list((run_dir / "wandb" / "artifacts" / "staging").iterdir())
    assert staged and all(p.is_file() or any(p.iterdir()) for p in staged)
    assert not [p for p in run_dir.rglob("*") if p.is_dir() and "staging" in str(p) and not any(p.iterdir())]


@pytest.fixture(scope="module")
def overflowing(tmp_path_factory):
    """A generator whose weights are all finite but whose images overflow to Inf/NaN (its RGB conv weights are 3e38),
    and FD-scenes statistics to score it against."""
    import numpy as np
    import torch

    from gandissect.models.progan import ProGANGenerator
    from gandissect.models.segmenter import SceneSegmenter

    made = tmp_path_factory.mktemp("overflowing")
    generator = ProGANGenerator(64, widths=[16, 16, 16, 16, 8, 8, 8, 8, 8, 8], latent_dim=8)
    with torch.no_grad():
        generator.output_64x64.conv.weight.fill_(3e38)
    generator.save(made / "inf.safetensors")
    features = SceneSegmenter.load(SHIPPED_SEGMENTER).widths[-1]
    np.savez(made / "real.npz", mu=np.zeros(features), sigma=np.eye(features))
    return made


TINY_REPAIR = ("--set layer=layer4 --set k=1 --set dissect_n=8 --set effect_n=4 --set fd_n=8 --set real_n=8 "
               "--set artifact.finetune_steps=1 --set artifact.calibration_n=8 --set artifact.check_n=4")
# (the step named, its command line); every run is refused with the same line and leaves no result
NON_FINITE = [
    ("generate", "generate --checkpoint {inf} --n 4 --out {tmp}/g.png"),
    ("eval gan", "eval gan --checkpoint {inf} --n 4 --name bad"),
    ("fid score", "fid score --checkpoint {inf} --stats {real} --n 4 --name bad"),
    ("dissect", "dissect --n 8 --set generator={inf} --set name=bad --set wandb.mode=disabled"),
    ("repair", "repair --set generator={inf} --set name=bad --set wandb.mode=disabled " + TINY_REPAIR),
]
RESULTS = {"results.json", "dissect.json", "repair.json", "config.yaml", "g.png", "g.json", "index.html"}


@pytest.mark.parametrize("step, command", NON_FINITE, ids=[step.replace(" ", "-") for step, _ in NON_FINITE])
def test_non_finite_images_stop_the_run_naming_the_step(step, command, overflowing, isolated_runs, tmp_path, capfd):
    inf = overflowing / "inf.safetensors"
    argv = command.format(inf=inf, real=overflowing / "real.npz", tmp=tmp_path).split()
    assert main(argv) == 2
    out, err = capfd.readouterr()
    errors = [line for line in err.splitlines() if "error" in line]
    assert out == "" and errors == [err.splitlines()[-1]], err[-3000:]  # one error line, the last, on its own
    assert errors[0] == (f"gandissect: error: {step}: generator {inf} made non-finite images (NaN or Inf) from finite "
                         "weights (its values overflow); stopped before any result was written")
    assert not [p for p in tmp_path.rglob("*") if p.name in RESULTS]


def test_a_failed_rerun_leaves_the_finished_runs_settings_and_results(tiny, overflowing, isolated_runs, capfd):
    run_dir = isolated_runs / "kept"
    common = ["dissect", "--n", "8", "--set", "name=kept", "--set", "top_k=1", "--set", "wandb.mode=disabled"]
    assert main([*common, "--set", f"generator={tiny}"]) == 0, capfd.readouterr().err[-3000:]
    config, result = (run_dir / "config.yaml").read_text(), (run_dir / "dissect.json").read_text()
    assert f"generator: {tiny}" in config and not (run_dir / "config.running.yaml").exists()
    inf = overflowing / "inf.safetensors"
    assert main([*common, "--set", f"generator={inf}", "--set", "resume=false"]) == 2  # fails in its second pass
    assert "dissect: generator" in capfd.readouterr().err
    assert (run_dir / "config.yaml").read_text() == config and (run_dir / "dissect.json").read_text() == result
    assert f"generator: {inf}" in (run_dir / "config.running.yaml").read_text()  # the failed attempt's own settings


TINY_ACE = ["--n", "4", "--set", "steps=1", "--set", "batch_size=2", "--set", "constants_n=4",
            "--set", "removal_units=1", "--set", "top_units=1", "--set", "init_units=1", "--set", "log_every=1"]


def test_an_ace_ranking_survives_a_rerun_of_its_dissection(tiny, isolated_runs, capfd):
    """ACE keeps its <class>-ace ranking in its own ace.json and writes nothing into the dissection it reads, so
    rerunning that dissection from scratch cannot take the ranking away."""
    dissect = ["dissect", "--n", "8", "--set", "name=d", "--set", "top_k=1", "--set", f"generator={tiny}",
               "--set", "wandb.mode=disabled"]
    assert main(dissect) == 0, capfd.readouterr().err[-3000:]
    assert main(["ace", "--set", "name=a", "--set", "dissection=d", "--set", f"generator={tiny}",
                 "--set", "wandb.mode=disabled", *TINY_ACE]) == 0, capfd.readouterr().err[-3000:]
    ace = json.loads((isolated_runs / "a" / "ace.json").read_text())
    assert ace["ranking"]["name"] == "tree-ace" and sorted(ace["ranking"]["units"]) == list(range(16))
    assert ace["settings"]["dissection"] == str(isolated_runs / "d" / "dissect.json")
    assert main(dissect + ["--set", "resume=false"]) == 0, capfd.readouterr().err[-3000:]  # all of it again
    assert "ace" not in (isolated_runs / "d" / "dissect.json").read_text()
    assert json.loads((isolated_runs / "a" / "ace.json").read_text()) == ace


def _dissect_argv(name: str, generator, n: int = 16) -> list[str]:
    """A dissection of ``n`` latents in 4 batches, saving its tally after each."""
    return ["dissect", "--n", str(n), "--layers", "layer4", "--checkpoint", str(generator), "--set",
            f"batch_size={n // 4}", "--set", "save_every=1", "--set", "top_k=2", "--set", "wandb.mode=disabled",
            "--name", name]


def _without_timing(result: dict) -> dict:
    return {key: value for key, value in result.items() if key != "timing"}


def _kill_at(run_dir, process, saves: int, delay: float) -> str:
    """SIGKILL the run ``delay`` seconds after it has saved its tally ``saves`` times (0: as soon as it has begun its
    passes); returns where the tally it left had got to."""
    tally, seen, last = run_dir / "tally.pt", 0, None
    deadline = time.monotonic() + 300
    while not (run_dir / "config.running.yaml").exists() or seen < saves:
        assert process.poll() is None, "the run ended before it was killed"
        assert time.monotonic() < deadline, "the run did not get there"
        if tally.exists():
            version = tally.stat().st_ino  # each save renames a new file into place
            seen, last = seen + (version != last), version
        time.sleep(0.001)
    time.sleep(delay)
    process.kill()
    assert process.wait(timeout=60) == -signal.SIGKILL
    return torch.load(tally, weights_only=True)["phase"] if tally.exists() else "no tally yet"


def test_a_dissection_killed_at_random_points_resumes_to_the_uninterrupted_result(tiny, isolated_runs, tmp_path,
                                                                                  capfd):
    """Three runs of the command line, each SIGKILLed at a seeded random point of its passes (it saves its tally
    after every batch, 4 per pass, and at the end of each pass), then resumed by the same command: dissect.json
    (thresholds, top images, the IoU of every unit with every class) equals an uninterrupted run's."""
    assert main(_dissect_argv("whole", tiny)) == 0, capfd.readouterr().err[-3000:]
    whole = _without_timing(json.loads((isolated_runs / "whole" / "dissect.json").read_text()))
    processes = {seed: subprocess.Popen([console_script(), *_dissect_argv(f"cut{seed}", tiny)], cwd=REPO,
                                        stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"cut{seed}.err", "w"))
                 for seed in range(3)}
    with concurrent.futures.ThreadPoolExecutor(len(processes)) as pool:  # the three at once: one startup's time
        kills = {seed: pool.submit(_kill_at, isolated_runs / f"cut{seed}", process, random.Random(seed).randint(0, 7),
                                   random.Random(seed).uniform(0, 0.1)) for seed, process in processes.items()}
        stopped_in = {seed: kill.result() for seed, kill in kills.items()}
    assert not any((isolated_runs / f"cut{seed}" / "config.yaml").exists() for seed in processes)
    for seed in stopped_in:
        assert main(_dissect_argv(f"cut{seed}", tiny)) == 0, capfd.readouterr().err[-3000:]
        resumed = json.loads((isolated_runs / f"cut{seed}" / "dissect.json").read_text())
        assert _without_timing(resumed) == whole, (seed, stopped_in[seed])


def test_two_runs_started_at_once_under_one_name_one_runs_and_the_other_is_refused(tiny, isolated_runs, tmp_path):
    # 512 latents: the dissection holds its directory for ~6 s, several times what the two processes' start-up
    # times (~8 s of imports each) differ by on a busy 2-core machine; with 32 latents it held it for 0.3 s, and in
    # one CI run the two ran one after the other
    argv = [console_script(), *_dissect_argv("both", tiny, n=512)]
    errs = [tmp_path / f"{i}.err" for i in range(2)]
    processes = [subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=open(err, "w"), text=True)
                 for err in errs]
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    assert sorted(process.returncode for process in processes) == [0, 2], [err.read_text()[-2000:] for err in errs]
    ran = 0 if processes[0].returncode == 0 else 1
    assert json.loads(outputs[ran])["run_dir"] == str(isolated_runs / "both") and outputs[1 - ran] == ""
    assert errs[1 - ran].read_text() == (f"gandissect: error: run directory {isolated_runs / 'both'} is in use by "
                                         f"another gandissect run (PID {processes[ran].pid}); wait for it to end or "
                                         "use another name\n")
    assert (isolated_runs / "both" / "config.yaml").is_file() and (isolated_runs / "both" / "dissect.json").is_file()
