"""Every console script: a module of hbi_transformers.cli whose `main` exits 0 whatever `run`
returns, and whose `--help` starts with what the command does and lists only its own options."""

import importlib
import re
from pathlib import Path

import pytest

SETUP = Path(__file__).resolve().parents[2] / "setup.py"
ENTRIES = re.findall(r'"(hbi-[\w-]+)=([\w.]+):(\w+)"', SETUP.read_text())
# Options of HBI training that commands which do not train HBI must not offer.
TRAINING_ONLY = ("--banzhaf_kl_weight", "--distillation_kl_weight", "--num_train_epochs", "--same_video_positives")


def help_text(module, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        module.run(["--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def option_blocks(text: str) -> list[str]:
    """The help paragraph of each option."""
    return re.split(r"\n\s{2}(?=-)", text.split("options:", 1)[1])[1:]


def test_console_scripts_are_cli_modules():
    assert {name for name, _, _ in ENTRIES} >= {
        "hbi-train", "hbi-evaluate", "hbi-train-estimator", "hbi-train-qa", "hbi-convert", "hbi-visualize",
        "hbi-index", "hbi-search", "hbi-demo",
    }
    for name, module, attribute in ENTRIES:
        assert module.startswith("hbi_transformers.cli.") and attribute == "main", name


@pytest.mark.parametrize("name, module_name", [(name, module) for name, module, _ in ENTRIES])
def test_main_exits_zero_whatever_run_returns(name, module_name, monkeypatch):
    module = importlib.import_module(module_name)
    # sys.exit(result) would exit 1 for a dict: main must return None.
    monkeypatch.setattr(module, "run", lambda argv=None: {"t2v_R@1": 1.0})
    assert module.main() is None, name


@pytest.mark.parametrize("name, module_name", [(name, module) for name, module, _ in ENTRIES])
def test_help_says_what_the_command_does_and_prints_each_default_once(name, module_name, capsys):
    module = importlib.import_module(module_name)
    text = help_text(module, capsys)
    usage, description = text.split("\n\n", 1)
    assert usage.startswith(f"usage: {name}"), name
    assert description.split()[0][0].isupper() and len(description.split("\n\n")[0]) > 40, name
    for block in option_blocks(text):
        assert block.count("default:") <= 1, (name, block)


@pytest.mark.parametrize("module_name", ["hbi_transformers.cli.evaluate", "hbi_transformers.cli.index",
                                         "hbi_transformers.cli.search", "hbi_transformers.cli.train_estimator"])
def test_only_training_commands_list_training_options(module_name, capsys):
    text = help_text(importlib.import_module(module_name), capsys)
    assert not [option for option in TRAINING_ONLY if re.search(rf"{option}\b", text)], module_name
    if module_name != "hbi_transformers.cli.train_estimator":
        assert not re.search(r"--(learning_rate|estimator)\b", text), module_name


def test_demo_settings_are_in_the_demo_help(capsys):
    text = help_text(importlib.import_module("hbi_transformers.cli.demo"), capsys)
    for option in ("--num_clips", "--hidden_size", "--train_epochs", "--estimator_samples", "--output_dir"):
        assert option in text


@pytest.mark.parametrize("module_name", ["hbi_transformers.cli.evaluate", "hbi_transformers.cli.index",
                                         "hbi_transformers.cli.search", "hbi_transformers.cli.demo"])
def test_commands_that_compute_choose_their_threads_from_the_cores(module_name, capsys):
    assert "--torch_threads" in help_text(importlib.import_module(module_name), capsys)
