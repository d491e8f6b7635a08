"""``equiprune distil`` and ``equiprune export`` on a distillation run, with a tiny random BERT and
its own word-level tokenizer saved to a directory (offline)."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from equiprune.cli import main  # noqa: E402
from equiprune.errors import ConfigError, EquipruneError  # noqa: E402
from equiprune.experiments import distil_run  # noqa: E402
from equiprune.experiments.distil_run import distil_config  # noqa: E402
from equiprune.experiments.hf_export import load_pruned  # noqa: E402

WORDS = "the a model layer head neuron prunes keeps small large fast slow data text runs learns".split()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A 2-layer BERT (4 heads, 37 FFN neurons a layer) and a tokenizer of WORDS, saved together."""
    path = tmp_path_factory.mktemp("tiny-bert")
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    transformers.BertTokenizerFast(vocab_file=str(path / "vocab.txt")).save_pretrained(path)
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=5 + len(WORDS), hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=4, intermediate_size=37)  # fmt: skip
    transformers.BertModel(config).save_pretrained(path)
    return path


@pytest.fixture()
def config_file(tmp_path, model_dir):
    generator = torch.Generator().manual_seed(1)
    picks = torch.randint(0, len(WORDS), (40, 8), generator=generator)
    lines = [" ".join(WORDS[int(i)] for i in row) for row in picks]
    (tmp_path / "text.txt").write_text("\n".join(lines))

    def write(method="obs", heads=4, extra=""):
        path = tmp_path / f"{method}.toml"
        path.write_text(f"""
[model]
source = "{model_dir}"
[text]
source = "{tmp_path / "text.txt"}"
max_length = 16
[prune]
method = "{method}"
heads = {heads}
neurons = 37
stage_steps = 2
calibration_batches = 2
{extra}
[train]
steps = 3
batch_size = 4
lr = 1e-3
""")
        return path

    return write


@pytest.mark.parametrize("method", ["obs", "game"])
def test_distil_prunes_refits_distils_and_saves_a_model_that_loads_back(config_file, tmp_path, method, capsys):
    out = tmp_path / "run"
    assert main(["distil", str(config_file(method)), "--out", str(out), "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert (results["heads"], results["heads_before"]) == (4, 8)
    assert (results["neurons"], results["neurons_before"]) == (37, 74)
    assert sum(results["neurons_per_layer"]) == 37 and len(results["heads_per_layer"]) == 2
    assert results["params"] < results["params_before"]
    assert -1 <= results["cosine_after_pruning"] <= 1 and -1 <= results["cosine"] <= 1
    heads = {f"encoder.layer.{i}.attention.output.dense" for i in range(2)}
    neurons = {f"encoder.layer.{i}.output.dense" for i in range(2)}
    # after the second stage every narrowed layer is refit again, in order, on the new inputs
    assert [set(stage) for stage in results["refit_errors"]] == [heads, heads | neurons]
    model = load_pruned(out / "model")
    assert sum(p.numel() for p in model.parameters()) == results["params"]
    assert "held-out cosine" in capsys.readouterr().out


def test_export_saves_the_distilled_model_in_its_own_format_with_a_speed_report(config_file, tmp_path, capsys):
    out = tmp_path / "run"
    main(["distil", str(config_file()), "--out", str(out), "--quiet"])
    capsys.readouterr()
    assert main(["export", str(out), "--batch-sizes", "1,2", "--repeats", "1"]) == 0
    printed = capsys.readouterr().out
    assert "linear MACs per token" in printed and "wrote" in printed
    saved, exported = load_pruned(out / "model"), load_pruned(out / "export")
    tokens = transformers.AutoTokenizer.from_pretrained(out / "export")(["the model prunes"], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(saved(**tokens)[0], exported(**tokens)[0])
    report = json.loads((out / "speed.json").read_text())
    assert [row["batch_size"] for row in report["latency"]] == [1, 2]
    assert report["params_after"] < report["params_before"] and report["flop_ratio"] < 1
    assert (out / "speed.md").is_file()


def test_a_run_stopped_while_distilling_resumes_without_pruning_again(config_file, tmp_path, monkeypatch):
    out, cfg = tmp_path / "run", config_file()
    real_distil = distil_run.distil

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(distil_run, "distil", stop)
    assert main(["distil", str(cfg), "--out", str(out), "--quiet"]) == 130  # says: continue with --resume
    assert (out / "pruned.json").is_file() and not (out / "results.json").exists()
    assert main(["distil", str(cfg), "--out", str(out), "--quiet"]) == 2  # refused without --resume
    monkeypatch.setattr(distil_run, "distil", real_distil)

    def no_pruning(*args, **kwargs):
        raise AssertionError("the pruning ran again")

    monkeypatch.setattr(distil_run, "prune_stages", no_pruning)
    assert main(["distil", str(cfg), "--out", str(out), "--quiet", "--resume"]) == 0
    assert json.loads((out / "results.json").read_text())["heads"] == 4
    assert main(["distil", str(cfg), "--out", str(out), "--quiet", "--resume"]) == 2  # finished


def test_bad_configurations_are_named(config_file, tmp_path, capsys):
    base = {"model": {"source": "x"}, "prune": {"heads": 4}}
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['epochs'\] in \[train\]"):
        distil_config({**base, "train": {"epochs": 3}})
    with pytest.raises(ConfigError, match=r"\[model\] source is required"):
        distil_config({"prune": {"heads": 4}})
    with pytest.raises(ConfigError, match="needs heads or neurons"):
        distil_config({"model": {"source": "x"}})
    with pytest.raises(ConfigError, match="steps must be a whole number >= 0"):
        distil_config({**base, "train": {"steps": -1}})
    with pytest.raises(ConfigError, match="lr must be a positive number"):
        distil_config({**base, "train": {"lr": 0}})
    with pytest.raises(ConfigError, match=r"schedule must be one of \['constant', 'linear'\], got 'cosine'"):
        distil_config({**base, "train": {"schedule": "cosine"}})
    assert main(["distil", str(config_file(heads=9)), "--out", str(tmp_path / "a"), "--quiet"]) == 2
    assert "has 8 query heads; keep 1 to 8" in capsys.readouterr().err
    broken = tmp_path / "missing.toml"
    broken.write_text('[model]\nsource = "/no/such/model"\n[prune]\nheads = 4\n')
    assert main(["distil", str(broken), "--out", str(tmp_path / "b"), "--quiet"]) == 2
    assert "not a model directory, not an installed weights package" in capsys.readouterr().err


@pytest.mark.parametrize("schedule, expected", [("linear", [1e-3, 7.5e-4, 5e-4, 2.5e-4]), ("constant", [1e-3] * 4)])
def test_the_distillation_learning_rate_follows_its_schedule(model_dir, monkeypatch, schedule, expected):
    from equiprune.experiments.distil import distil
    from equiprune.experiments.text import token_batches

    used = []
    step = torch.optim.AdamW.step

    def recording(self, *args, **kwargs):
        used.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording)
    tokenizer, model = distil_run.load_model(str(model_dir))
    batches = token_batches(tokenizer, [" ".join(WORDS[i : i + 5]) for i in range(8)], 4)
    distil(model, distil_run.load_model(str(model_dir))[1], batches, 4, 1e-3, schedule=schedule)
    assert used == pytest.approx(expected)
    distil(model, model, batches, 0, 1e-3, schedule=schedule)  # no steps asked: nothing to do, no error
    with pytest.raises(ValueError, match="schedule must be one of"):
        distil(model, model, batches, 1, 1e-3, schedule="step")


def test_training_sentences_are_shuffled_by_the_seed_and_the_held_out_ones_are_not():
    from equiprune.experiments.text import split_held_out

    sentences = [f"sentence {i:02d}" for i in range(40)]
    training, held = split_held_out(sentences, 5, seed=0)
    in_order, same_held = split_held_out(sentences, 5, seed=None)
    assert held == same_held == sentences[::5]
    assert sorted(training) == in_order and training != in_order
    assert split_held_out(sentences, 5, seed=0)[0] == training != split_held_out(sentences, 5, seed=1)[0]


def test_the_standard_library_gives_thousands_of_distinct_english_sentences_in_a_fixed_order(monkeypatch):
    import logging

    from equiprune.experiments.text import stdlib_sentences

    sentences = stdlib_sentences()
    assert len(sentences) > 5000
    assert all(40 <= len(s) <= 300 for s in sentences)

    def warning_once(self):
        """A method that a library adds to the standard library's logger class at import time."""

    monkeypatch.setattr(logging.Logger, "warning_once", warning_once, raising=False)  # as transformers does
    assert stdlib_sentences() == sentences == sorted(set(sentences))


def test_without_transformers_distil_and_load_say_what_to_install_and_write_nothing(
    config_file, tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(__import__("sys").modules, "transformers", None)  # as if not installed
    out = tmp_path / "run"
    assert main(["distil", str(config_file()), "--out", str(out), "--quiet"]) == 2
    assert "pip install 'equiprune[hf]'" in capsys.readouterr().err
    assert not out.exists()  # no half-made run directory left behind
    expected = r"a Hugging Face model needs the hf extra \(transformers is not installed\): pip install .equiprune.hf.."
    with pytest.raises(EquipruneError, match=expected):
        load_pruned(tmp_path)


def test_a_directory_is_claimed_only_for_its_own_distillation(config_file, tmp_path):
    cfg = distil_run.load_distil_config(config_file())
    out = tmp_path / "claimed"
    assert distil_run._prepare(out, cfg, resume=False) is False  # new: made, nothing to resume
    other = distil_run.load_distil_config(config_file(heads=2))
    with pytest.raises(ConfigError, match=r"another configuration \(heads: 4 there, 2 here\)"):
        distil_run._prepare(out, other, resume=True)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not an equiprune run directory"):
        distil_run._prepare(foreign, cfg, resume=False)
    with pytest.raises(ConfigError, match="is a file"):
        distil_run._prepare(foreign / "notes.txt", cfg, resume=False)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]  # nothing written into it
