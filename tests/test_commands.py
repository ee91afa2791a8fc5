import importlib
import re
from pathlib import Path

SETUP = Path(__file__).resolve().parents[1] / "setup.py"


def test_every_console_script_resolves_and_returns_nothing(monkeypatch):
    entries = re.findall(r'"(hbi-[\w-]+)=([\w.]+):(\w+)"', SETUP.read_text())
    assert {name for name, _, _ in entries} >= {"hbi-train", "hbi-evaluate", "hbi-convert", "hbi-index", "hbi-search"}
    for name, module, attribute in entries:
        command = getattr(importlib.import_module(module), attribute)
        assert callable(command), name
    # A command whose function returns a result must still exit 0 (sys.exit(dict) exits 1).
    from hbi_transformers.cli import commands

    assert commands._command(lambda: {"t2v_R@1": 1.0})() is None
