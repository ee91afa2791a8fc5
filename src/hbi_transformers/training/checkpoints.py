"""Which checkpoint a run resumes from: `--resume_from_checkpoint latest` means the newest
complete one, so that a checkpoint half-written when a run was killed is never chosen."""

import re
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

# The Trainer writes this file after the weights, optimizer, scheduler and RNG states.
COMPLETION_MARKER = "trainer_state.json"
LATEST = "latest"
_CHECKPOINT_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def latest_complete_checkpoint(output_dir: str | Path) -> str | None:
    """The checkpoint folder of `output_dir` with the highest step whose state file was written;
    None when there is none."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    complete = [
        (int(match[1]), path)
        for path in output_dir.iterdir()
        if (match := _CHECKPOINT_NAME.match(path.name)) and (path / COMPLETION_MARKER).is_file()
    ]
    return str(max(complete)[1]) if complete else None
