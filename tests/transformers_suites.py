"""transformers' own common test suites (`ModelTesterMixin`, `ConfigTester`,
`ProcessorTesterMixin`, `VideoProcessingTestMixin`), taken at test time from the source
distribution of the installed transformers version, which the package registry serves; nothing of
them is kept in this repository.

The sdist ships the top-level `tests/*.py` only. What those files import from elsewhere in the
transformers repository is provided here by small stand-ins (`STAND_INS`). The extracted files are
cached (`HBI_TRANSFORMERS_TESTS_CACHE`, default `~/.cache/hbi-transformers`), so the registry is
asked once per transformers version.
"""

import importlib
import os
import subprocess
import sys
import tarfile
import tempfile
import types
from pathlib import Path

import transformers

PACKAGE = "transformers_common_tests"
SUITE_FILES = (
    "test_modeling_common.py",
    "test_configuration_common.py",
    "test_processing_common.py",
    "test_video_processing_common.py",
    "test_image_processing_common.py",
)


def cache_root() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hbi-transformers"
    return Path(os.environ.get("HBI_TRANSFORMERS_TESTS_CACHE", default)) / f"transformers-{transformers.__version__}"


def _download_sdist(directory: str) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
               f"transformers=={transformers.__version__}", "-d", directory]
    # Without build isolation pip reads the sdist's metadata with the installed setuptools (7 s
    # instead of 30 s); an environment without setuptools falls back to an isolated build.
    result = subprocess.run([*command, "--no-build-isolation"], capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(
            f"could not fetch the transformers {transformers.__version__} source distribution from the package "
            f"registry (needed for transformers' common test suites):\n{result.stderr[-2000:]}"
        )
    (archive,) = Path(directory).glob("transformers-*.tar.gz")
    return archive


def fetch_suites() -> Path:
    """The folder holding the `transformers_common_tests` package, fetched and extracted once."""
    root = cache_root()
    package = root / PACKAGE
    if all((package / name).exists() for name in SUITE_FILES):
        return root
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as scratch:
        archive = _download_sdist(scratch)
        staging = Path(scratch, PACKAGE)
        staging.mkdir()
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                parts = Path(member.name).parts
                if len(parts) == 3 and parts[1] == "tests" and parts[2].endswith(".py") and member.isfile():
                    (staging / parts[2]).write_bytes(tar.extractfile(member).read())
        missing = [name for name in SUITE_FILES if not (staging / name).exists()]
        if missing:
            raise RuntimeError(f"{archive.name} has no tests/{', tests/'.join(missing)}")
        (staging / "__init__.py").write_text("")
        # Another test process may have won the race: its copy is as good as this one.
        try:
            staging.rename(package)
        except OSError:
            if not package.exists():
                raise
    return root


# ------------------------------------------------------------------------------------------------
# Stand-ins for what the suites import from outside the sdist's tests/ folder
# ------------------------------------------------------------------------------------------------
class ExportTesterMixin:
    """Stand-in for `tests/exporters/test_export.py`: the model exports with `torch.export`
    (strict=False) and the exported program gives the eager outputs."""

    def test_torch_export(self):
        import torch

        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config).eval()
            with torch.no_grad():
                eager = model(**inputs)
                exported = torch.export.export(model, args=(), kwargs=inputs, strict=False)
                got = exported.module()(**inputs)
            for name, value in eager.items():
                if isinstance(value, torch.Tensor):
                    torch.testing.assert_close(got[name], value, msg=f"{model_class.__name__}.{name}")


class GenerationTesterMixin:
    """Stand-in for `tests/generation/test_utils.py`: HBI does not generate, so the suite only
    checks that the tester does not inherit this."""


# Non-default values of general `PreTrainedConfig` arguments, which a config must keep.
CONFIG_COMMON_KWARGS = {
    "return_dict": False,
    "output_hidden_states": True,
    "output_attentions": True,
    "dtype": "float16",
    "tie_word_embeddings": False,
    "chunk_size_feed_forward": 5,
    "architectures": ["BertModel"],
    "id2label": {0: "label"},
    "label2id": {"label": "0"},
    "problem_type": "regression",
}


def _url_to_local_path(url: str) -> str:
    """Stand-in for transformers' `utils/fetch_hub_objects_for_ci.py`, which maps hub sample files
    to a CI download; offline, tests that read them fail on the URL and say so."""
    return url


STAND_INS = {
    f"{PACKAGE}.exporters": {},
    f"{PACKAGE}.exporters.test_export": {"ExportTesterMixin": ExportTesterMixin},
    f"{PACKAGE}.generation": {},
    f"{PACKAGE}.generation.test_utils": {"GenerationTesterMixin": GenerationTesterMixin},
    f"{PACKAGE}.utils": {},
    f"{PACKAGE}.utils.test_configuration_utils": {"config_common_kwargs": CONFIG_COMMON_KWARGS},
    "fetch_hub_objects_for_ci": {"url_to_local_path": _url_to_local_path},
}


def common_tests(module: str) -> types.ModuleType:
    """One suite module, e.g. `common_tests("test_modeling_common").ModelTesterMixin`."""
    root = str(fetch_suites())
    if root not in sys.path:
        sys.path.insert(0, root)
    for name, attributes in STAND_INS.items():
        if name not in sys.modules:
            stand_in = types.ModuleType(name)
            stand_in.__dict__.update(attributes)
            stand_in.__path__ = []
            sys.modules[name] = stand_in
    return importlib.import_module(f"{PACKAGE}.{module}")


# Marks transformers' suites put on their tests (transformers registers them in its own conftest).
SUITE_MARKS = ("accelerate_tests", "flash_attn_test", "flash_attn_3_test", "flash_attn_4_test", "slow",
               "torch_compile_test")
