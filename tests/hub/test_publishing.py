"""Publishing as transformers users do it, against a local stand-in of the Hub API: `hbi-push` on a
folder made the way `hbi-demo` makes it keeps its card (updated), reads the run's metrics file,
and uploads a folder whose card's snippet runs as written; `model.push_to_hub` and
`processor.push_to_hub` carry the code, weights, processor and a card."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import textured_frames, tiny_config, write_mp4
from local_hub import LocalHub


from hbi_transformers import (
    HBIForVideoQuestionAnswering,
    HBIModel,
    HBIPreTrainedModel,
    HBIProcessor,
    HBIVideoProcessor,
    video_qa_config,
)
from hbi_transformers.apps.demo import DemoSettings, caption_tokenizer, save_outputs
from hbi_transformers.cli.push_to_hub import run as push_command
from hbi_transformers.hub.publishing import missing_hub_files
from hbi_transformers.training.metrics.video_qa import video_qa_accuracy

CAPTIONS = ["a red square moves left", "a blue circle appears", "a green triangle shrinks, then it leaves",
            "a red circle grows", "a blue square moves up, then a red triangle appears"]
MODEL_CODE = {"configuration_hbi.py", "modeling_hbi.py", "wti.py", "token_merging.py", "banzhaf_estimator.py",
              "losses.py", "temporal.py"}
PROCESSOR_CODE = {"processing_hbi.py", "video_processing_hbi.py", "video_augmentation.py", "video_io.py",
                  "video_backends.py"}
REMOTE_CODE = MODEL_CODE | PROCESSOR_CODE
PROCESSOR_FILES = {"processor_config.json", "tokenizer.json", "tokenizer_config.json"}


def front_matter(card: str) -> dict:
    return yaml.safe_load(card.split("---\n")[1])


def snippet(card: str) -> str:
    """The Python block of the card's Use section, as a user copies it."""
    use = card.split("<!-- hbi:use -->")[1]
    return re.search(r"```python\n(.*?)```", use, re.DOTALL)[1]


# Optional video decoders. Loaded from the hub, transformers checks the `import` statements of
# every remote module (`check_imports`) and refuses the code when a package they name is missing;
# video_backends.py imports the decoders with importlib where it uses them, so none is needed.
OPTIONAL_DECODERS = ("torchcodec", "decord")


def run_as_user(code: str, cwd, tmp_path, hub_cache=None) -> str:
    """Runs `code` in a fresh interpreter in `cwd`, offline, where importing hbi_transformers and
    the optional decoders fails (a user of the remote code without the package, who decodes with
    PyAV); returns what it printed."""
    hidden = ("hbi_transformers", *OPTIONAL_DECODERS)
    preamble = "import sys\n" + "".join(f'sys.modules["{name}"] = None  # importing it now fails\n' for name in hidden)
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "user_hf_home"), "PATH": os.environ.get("PATH", ""),
           "OMP_NUM_THREADS": "1"}
    if hub_cache is not None:
        env["HF_HUB_CACHE"] = str(hub_cache)
    result = subprocess.run([sys.executable, "-c", preamble + code], cwd=cwd, capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory):
    """`hbi-demo`'s output folder, written by the demo's own `save_outputs` for a tiny model with a
    tokenizer trained on the captions, as `hbi-demo --output_dir hbi-demo` leaves it (relative
    path; the card's snippet names it so)."""
    root = tmp_path_factory.mktemp("demo-run")
    tokenizer = caption_tokenizer(DemoSettings(tokenizer_name_or_path=None), CAPTIONS * 4)
    processor = HBIProcessor(
        HBIVideoProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, max_frames=4,
                          video_framerate=2.0),
        tokenizer, max_words=24,
    )
    torch.manual_seed(0)
    text_config = {**tiny_config().text_config.to_dict(), "vocab_size": len(tokenizer), "max_position_embeddings": 32,
                   "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    model = HBIModel(tiny_config(text_config=text_config))
    video = write_mp4(root / "clip.mp4", textured_frames(16, 48, 48), fps=8)
    retrieval = {"t2v_R@1": 24.4, "t2v_R@5": 62.2, "t2v_R@10": 80.8, "t2v_R@50": 97.2, "t2v_MdR": 4.0, "t2v_MnR": 8.2,
                 "v2t_R@1": 22.5, "v2t_R@5": 65.8, "v2t_R@10": 79.2, "v2t_R@50": 97.5, "v2t_MdR": 3.0, "v2t_MnR": 8.1,
                 "t2v_num_queries": 360, "v2t_num_queries": 120}
    summary = {"untrained": {**retrieval, "t2v_R@1": 0.8, "t2v_R@50": 45.0}, "trained": retrieval,
               "estimator": {"heldout_mse": 0.01, "mean_baseline_mse": 0.02}, "minutes": 13.1,
               "t2v_R@1_chance": 0.83,
               "settings": {**DemoSettings().__dict__, "hidden_size": 32, "num_layers": 4, "image_size": 32,
                            "max_frames": 4, "video_framerate": 2.0}}
    cwd = os.getcwd()
    os.chdir(root)
    try:
        save_outputs(model, processor, summary, "table", SimpleNamespace(video=str(video), caption=CAPTIONS[0]),
                     Path("hbi-demo"))
    finally:
        os.chdir(cwd)
    return root / "hbi-demo"


def test_demo_card_is_true_and_its_snippet_runs(demo_folder, tmp_path):
    card = (demo_folder / "README.md").read_text()
    metadata = front_matter(card)
    assert "base_model" not in metadata and "trained from scratch" in card and "openai/clip" not in card
    size = len(HBIProcessor.from_pretrained(demo_folder).tokenizer)
    assert f"{size:,}-token tokenizer trained on the training captions" in card and "CLIP tokens" not in card
    results = card.split("## Results")[1].split("## Use")[0]
    trained_t2v = next(line for line in results.splitlines() if line.startswith("trained") and " t2v " in line)
    assert trained_t2v.split()[2:] == ["24.4", "62.2", "80.8", "97.2", "4.0", "8.2"]  # R@50 measured and shown
    assert "pip install hbi-transformers" not in card and "not published on a package registry" in card
    code = snippet(card)
    assert 'from_pretrained("hbi-demo"' in code and '"hbi-demo/example.mp4"' in code
    assert json.loads((demo_folder / "example.json").read_text())["caption"] == CAPTIONS[0]
    printed = run_as_user(code, demo_folder.parent, tmp_path)  # from where hbi-demo was run
    assert "tensor(" in printed


def test_push_command_keeps_the_demo_card(demo_folder, tmp_path, capsys):
    demo_card = (demo_folder / "README.md").read_text()
    folder = push_command([str(demo_folder), "--repo-id", "me/hbi-demo", "--output", str(tmp_path / "dry"),
                           "--dry-run"])
    assert "model card: the folder's, updated" in capsys.readouterr().out
    card = (folder / "README.md").read_text()
    assert front_matter(card) == front_matter(demo_card)  # model-index and results kept, no base model added
    assert card.split("<!-- hbi:use -->")[0] == demo_card.split("<!-- hbi:use -->")[0]
    assert 'from_pretrained("me/hbi-demo"' in card and 'hf_hub_download("me/hbi-demo", "example.mp4")' in card
    assert (folder / "example.mp4").read_bytes() == (demo_folder / "example.mp4").read_bytes()
    assert missing_hub_files(folder) == []

    # The run's own metrics file is read, not ignored: changed figures replace the card's.
    summary = json.loads((demo_folder / "metrics.json").read_text())
    summary["trained"]["t2v_R@1"] = 31.5
    (tmp_path / "metrics.json").write_text(json.dumps(summary))
    folder = push_command([str(demo_folder), "--repo-id", "me/hbi-demo", "--output", str(tmp_path / "again"),
                           "--metrics", str(tmp_path / "metrics.json"), "--dry-run"])
    card = (folder / "README.md").read_text()
    (entry,) = front_matter(card)["model-index"]
    assert entry["results"][0]["metrics"][0] == {"type": "recall_at_1", "value": 31.5, "name": "R@1"}
    assert "31.5" in card.split("## Results")[1] and "base_model" not in front_matter(card)

    (tmp_path / "other.json").write_text(json.dumps({"learning_rate": 0.1}))
    with pytest.raises(ValueError, match=r"other\.json: no retrieval"):
        push_command([str(demo_folder), "--repo-id", "me/hbi-demo", "--output", str(tmp_path / "bad"),
                      "--metrics", str(tmp_path / "other.json"), "--dry-run"])
    assert not (tmp_path / "bad").exists()  # refused before anything is written


def test_push_command_uploads_a_folder_whose_snippet_runs(demo_folder, tmp_path, monkeypatch):
    hub = LocalHub(tmp_path / "hub").install(monkeypatch)
    folder = push_command([str(demo_folder), "--repo-id", "me/hbi-demo", "--output", str(tmp_path / "upload"),
                           "--private"])
    ((repo_id, message, written),) = hub.commits
    assert repo_id == "me/hbi-demo" and written == sorted(path.name for path in folder.iterdir())
    assert {"config.json", "model.safetensors", "README.md", "example.mp4", *PROCESSOR_FILES,
            *REMOTE_CODE} <= set(written)
    # The card's snippet, as written, against the pushed repository (served from a hub cache, offline).
    card = (hub.repo("me/hbi-demo") / "README.md").read_text()
    printed = run_as_user(snippet(card), tmp_path, tmp_path, hub_cache=hub.as_hf_cache("me/hbi-demo", tmp_path / "c"))
    assert "tensor(" in printed


def test_model_and_processor_push_to_hub(demo_folder, tmp_path, monkeypatch):
    hub = LocalHub(tmp_path / "hub").install(monkeypatch)
    model = HBIModel.from_pretrained(demo_folder)
    processor = HBIProcessor.from_pretrained(demo_folder)
    # As remote code loaded without the package: transformers' default card, nothing of HBI in it.
    with monkeypatch.context() as without_package:
        without_package.setattr(HBIPreTrainedModel, "push_card_writer", None)
        model.push_to_hub("me/plain")
        processor.push_to_hub("me/plain")
    (_, _, model_files), (_, _, processor_files) = hub.commits
    assert {"config.json", "model.safetensors", "README.md"} | MODEL_CODE <= set(model_files)
    assert PROCESSOR_FILES | PROCESSOR_CODE | {"README.md"} <= set(processor_files)
    assert "hbi:use" not in (hub.repo("me/plain") / "README.md").read_text()

    # With the package: the demo's card, pointed at the repository, with its example clip.
    model.push_to_hub("me/hooked")
    processor.push_to_hub("me/hooked")  # keeps the card the repository now has
    card = (hub.repo("me/hooked") / "README.md").read_text()
    assert front_matter(card) == front_matter((demo_folder / "README.md").read_text())
    assert 'from_pretrained("me/hooked"' in card and "example.mp4" in hub.files("me/hooked")
    assert missing_hub_files(hub.repo("me/hooked")) == []
    printed = run_as_user(snippet(card), tmp_path, tmp_path, hub_cache=hub.as_hf_cache("me/hooked", tmp_path / "c"))
    assert "tensor(" in printed

    # A repository's own card is kept on the next push.
    (hub.repo("me/hooked") / "README.md").write_text("---\nlicense: mit\n---\n# Mine\n")
    model.push_to_hub("me/hooked")
    assert (hub.repo("me/hooked") / "README.md").read_text().endswith("# Mine\n")


def test_remote_code_from_the_hub_needs_no_optional_decoder(demo_folder, tmp_path, monkeypatch):
    hub = LocalHub(tmp_path / "hub").install(monkeypatch)
    push_command([str(demo_folder), "--repo-id", "me/hbi-demo", "--output", str(tmp_path / "upload")])
    code = 'from transformers import AutoProcessor\nAutoProcessor.from_pretrained("me/hbi-demo", trust_remote_code=True)'
    run_as_user(code, tmp_path, tmp_path, hub_cache=hub.as_hf_cache("me/hbi-demo", tmp_path / "c"))


def test_video_qa_folder_gets_a_video_qa_card_that_runs(demo_folder, tmp_path, monkeypatch):
    """A folder as hbi-train-qa leaves it: the QA model, its processor, eval_results.json."""
    qa_folder = tmp_path / "hbi-qa"
    body = HBIModel.from_pretrained(demo_folder)
    answers = ["red", "blue", "square", "circle", "two"]
    config = video_qa_config(body.config, id2label=dict(enumerate(answers)),
                             label2id={answer: label for label, answer in enumerate(answers)})
    torch.manual_seed(0)
    HBIForVideoQuestionAnswering(config).save_pretrained(qa_folder)
    HBIProcessor.from_pretrained(demo_folder).save_pretrained(qa_folder)
    metrics = video_qa_accuracy([0, 1, 2, 2], [0, 1, 3, -1], ["what", "what", "who", "how"])
    (qa_folder / "eval_results.json").write_text(json.dumps(metrics))

    hub = LocalHub(tmp_path / "hub").install(monkeypatch)
    folder = push_command([str(qa_folder), "--repo-id", "me/hbi-qa", "--output", str(tmp_path / "upload")])
    card = (hub.repo("me/hbi-qa") / "README.md").read_text()
    metadata = front_matter(card)
    assert metadata["pipeline_tag"] == "visual-question-answering"
    (result,) = metadata["model-index"][0]["results"]
    assert result["task"]["type"] == "visual-question-answering"
    assert result["metrics"][0]["value"] == round(200 / 3, 2)  # 2 of the 3 answerable questions
    assert "questions as at most 24 tokens" in card and "the 5 answers" in card
    assert missing_hub_files(folder) == []
    printed = run_as_user(snippet(card), tmp_path, tmp_path, hub_cache=hub.as_hf_cache("me/hbi-qa", tmp_path / "c"))
    assert printed.strip() in answers
