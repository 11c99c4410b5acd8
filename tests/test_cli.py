import json
import os
import subprocess

import pytest

from .conftest import REPO, SHIPPED_SEGMENTER, console_script, run_cli


gandissect = run_cli  # the commands' main() in this process; installed_gandissect starts the script itself


def installed_gandissect(*args, env_runs):
    """The installed console script in a fresh process, as a user types it."""
    env = dict(os.environ, GANDISSECT_RUNS=str(env_runs))
    return subprocess.run([console_script(), *map(str, args)], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=600)


def test_scenes_command_writes_grid_and_statistics(tmp_path):
    done = gandissect("scenes", "--n", 16, "--seed", 0, "--out", tmp_path / "s", "--stats-n", 40)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "s" / "scenes.png").stat().st_size > 1000
    stats = json.loads((tmp_path / "s" / "statistics.json").read_text())
    assert stats["n"] == 40 and stats["shown_indices"] == list(range(16))
    assert "stats_n: 40" in (tmp_path / "s" / "config.yaml").read_text()
    assert set(stats["classes"]["dome"]) == {"category", "pixel_share", "presence_rate"}
    dome = gandissect("scenes", "--n", 4, "--class", "dome", "--out", tmp_path / "d", "--stats-n", 4)
    assert dome.returncode == 0, dome.stderr[-2000:]
    shown = json.loads((tmp_path / "d" / "statistics.json").read_text())["shown_indices"]
    from gandissect.data import scenes

    assert all((scenes.render_scene(0, i)[1] == scenes.class_index("dome")).any() for i in shown)


def _one_line_error(done, *fragments):
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gandissect: error: "), done.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0]


def test_bad_input_gives_one_line_and_a_nonzero_exit(tmp_path):
    _one_line_error(gandissect("scenes", "--n", 4, "--class", "trees", "--out", tmp_path / "x"),
                    "unknown class 'trees'", "tree")
    assert not (tmp_path / "x").exists()
    _one_line_error(gandissect("eval", "segmenter", "--checkpoint", tmp_path / "none.safetensors", "--n", 2),
                    f"checkpoint not found: {tmp_path / 'none.safetensors'}")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00" * 64)
    _one_line_error(gandissect("eval", "segmenter", "--checkpoint", corrupt, "--n", 2), str(corrupt), "corrupt")
    config = tmp_path / "c.yaml"
    config.write_text("trainer:\n  max_step: 3\n")
    _one_line_error(installed_gandissect("train", "segmenter", "--config", config, env_runs=tmp_path / "runs"),
                    "unknown config key trainer.max_step", "max_steps")
    assert not (tmp_path / "runs").exists()  # refused before any run directory was made


def test_eval_prints_json_and_keeps_it_in_the_run_directory(tmp_path):
    done = gandissect("eval", "segmenter", "--checkpoint", SHIPPED_SEGMENTER, "--n", 20, "--seed", 12345,
                      env_runs=tmp_path / "runs")
    assert done.returncode == 0, done.stderr[-2000:]
    printed = json.loads(done.stdout)
    assert 0 <= printed["miou"] <= 1 and len(printed["per_class_iou"]) == 12
    saved = json.loads((tmp_path / "runs" / "eval-segmenter" / "results.json").read_text())
    assert saved["miou"] == pytest.approx(printed["miou"])


def test_demo_writes_a_report_and_an_offline_wandb_run(tmp_path):
    tiny_ace = "[class_name=tree, n=32, constants_n=64, steps=4, batch_size=8, removal_units=3, top_units=3]"
    # the demo's own repair reads the shipped artifact segmenter, as `make demo` does
    tiny_repair = ("[artifact.segmenter=checkpoints/scene_gan_artifact_segmenter.safetensors, dissect_n=64, "
                   "effect_n=16, fd_n=160, real_n=160, batch_size=32, k=2, candidates=3, artifact.check_n=32, "
                   "random_draws=3, evaluation.resamples=30, evaluation.kid_subsets=5, evaluation.rules_n=64, "
                   "learned.steps=8, learned.batch_size=8]")
    done = gandissect("demo", "--set", "n=16", "--set", "stats_n=32", "--set", "dissect_n=64",
                      "--set", f"ace_set={tiny_ace}", "--set", f"repair_set={tiny_repair}", env_runs=tmp_path / "runs")
    assert done.returncode == 0, done.stderr[-2000:]
    run_dir = tmp_path / "runs" / "demo"
    html = (run_dir / "index.html").read_text()
    for linked in ("scenes.png", "labels_true.png", "labels_predicted.png", "results.json", "config.yaml"):
        assert linked in html and (run_dir / linked).exists()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["segmentation"]["n"] == 16
    assert results["dissection"]["n"] == 64 and "dissect/index.html" in html
    ace = json.loads((run_dir / "ace" / "ace.json").read_text())  # ranked from the demo's own dissection
    assert ace["ranking"]["name"] == "tree-ace"
    assert ace["settings"]["dissection"] == str(run_dir / "dissect" / "dissect.json")
    assert set(results["ace"]["removal"]) == {"iou", "ace"} and "ace/index.html" in html
    repaired = results["repair"]
    assert repaired["fd_name"] == "FD-scenes" and repaired["fd_n"] == 160
    assert repaired["fd_original"] > 0 and repaired["fd_random_mean"] > 0
    assert "repair/index.html" in html and (run_dir / "repair" / "before_after.png").is_file()
    assert html.index("Repair") < html.index("Dissection")  # the main job's result comes first
    from gandissect.core.wandb_files import read_offline_history

    rows = read_offline_history(run_dir / "wandb")  # the demo's own run; the dissection's is under dissect/
    assert rows and rows[0]["miou"] == pytest.approx(results["segmentation"]["miou"])
    assert read_offline_history(run_dir / "dissect")[0]["layer4/interpretable_units"] == \
        results["dissection"]["interpretable_units"]


@pytest.fixture
def small_generator(tmp_path):
    from gandissect.models.progan import ProGANGenerator

    path = tmp_path / "g.safetensors"
    ProGANGenerator(64, widths=[16, 16, 16, 16, 8, 8, 8, 8, 8, 8], latent_dim=8).save(path)
    return path


def test_generate_gives_the_same_images_for_the_same_seed(tmp_path, small_generator):
    def grid(seed, name):
        done = gandissect("generate", "--checkpoint", small_generator, "--n", 6, "--seed", seed,
                          "--out", tmp_path / name)
        assert done.returncode == 0, done.stderr[-2000:]
        return (tmp_path / name).read_bytes()

    first, again, other = grid(3, "a.png"), grid(3, "b.png"), grid(4, "c.png")
    assert first == again and first != other
    record = json.loads((tmp_path / "a.json").read_text())
    assert (record["seed"], record["n"], record["latent_dim"]) == (3, 6, 8)


def test_eval_gan_compares_class_shares_and_reports_fd(tmp_path, small_generator):
    done = gandissect("eval", "gan", "--checkpoint", small_generator, "--n", 10, "--segmenter", SHIPPED_SEGMENTER,
                      env_runs=tmp_path / "runs")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["n"] == 10 and result["fd_scenes"] > 0
    real = sum(row["real_share"] for row in result["classes"].values())
    generated = sum(row["generated_share"] for row in result["classes"].values())
    assert real == pytest.approx(1.0) and generated == pytest.approx(1.0)
    assert result["classes"]["sky"]["checked"] and not result["classes"]["window"]["checked"]
    sky = result["classes"]["sky"]
    assert sky["real_presence"] == 1.0  # every scene of the world has sky
    for side in ("real", "generated"):  # share x image area = presence x pixels where present, for every class
        for row in result["classes"].values():
            assert 0 <= row[f"{side}_presence"] <= 1
            pixels = row[f"{side}_pixels_where_present"]
            assert row[f"{side}_share"] * 64 * 64 == pytest.approx(row[f"{side}_presence"] * (pixels or 0))
    # an untrained generator draws no sky where the world has 38% of it: the bar must fail
    assert result["passes"] is False
    run_dir = tmp_path / "runs" / "eval-gan"
    assert (run_dir / "shares.png").stat().st_size > 0 and (run_dir / "results.json").exists()


def test_generator_commands_name_a_wrong_checkpoint(tmp_path):
    done = gandissect("generate", "--checkpoint", SHIPPED_SEGMENTER, "--out", tmp_path / "x.png")
    _one_line_error(done, "holds a 'scene-segmenter' model; expected 'generator (progan-generator, "
                          "stylegan2-generator, ganzoo-progan-generator)'")
    assert not (tmp_path / "x.png").exists()
