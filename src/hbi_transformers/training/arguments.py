"""Training arguments whose defaults are the official HBI recipes: retrieval
(`HBITrainingArguments`) and video question answering (`VideoQATrainingArguments`)."""

import math
from dataclasses import dataclass, field

from transformers import TrainingArguments

HBI_OPTIMIZERS = ("bert_adam", "transformers")


@dataclass
class HBITrainingArguments(TrainingArguments):
    """`TrainingArguments` with the official HBI recipe as defaults (docs/training.md): lr 1e-4 for
    the HBI heads and 1e-4 x `coef_lr` for the CLIP towers, weight decay 0.2, Adam betas (0.9,
    0.98), eps 1e-6, 10% warm-up then cosine over a fixed 5-epoch horizon, gradient clipping at 1.0
    per tensor and globally, logit scale clamped at ln(100)."""

    learning_rate: float = 1e-4
    weight_decay: float = 0.2
    adam_beta2: float = 0.98
    adam_epsilon: float = 1e-6
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    num_train_epochs: float = 5.0
    # The collator reads the raw columns (video, caption, ...): keep them.
    remove_unused_columns: bool = False
    coef_lr: float = field(default=1e-3, metadata={"help": "Learning rate factor of the CLIP towers."})
    hbi_optimizer: str = field(
        default="bert_adam",
        metadata={"help": "bert_adam: the official Adam without bias correction and with per-tensor clipping; "
                  "transformers: the optimiser named by --optim (AdamW by default), same parameter groups."},
    )
    per_tensor_max_grad_norm: float = field(
        default=1.0, metadata={"help": "bert_adam clips each parameter tensor's gradient to this norm (<= 0: off)."}
    )
    schedule_epochs: float | None = field(
        default=5.0,
        metadata={"help": "Warm-up + cosine horizon in epochs, fixed whatever num_train_epochs (official: 5). "
                  "None: the actual training length."},
    )
    freeze_patch_embedding: bool = field(default=True, metadata={"help": "Freeze CLIP's patch embedding, as officially."})
    max_logit_scale: float = field(default=math.log(100), metadata={"help": "Clamp of the log temperature after each step."})
    eval_chunk_size: int = field(default=64, metadata={"help": "Texts x videos per scoring block at evaluation."})
    eval_dual_softmax: bool = field(default=False, metadata={"help": "Also report dual-softmax re-ranked metrics."})

    # What the official selection keeps the best of.
    selection_metric = "t2v_R@1"
    official_selection: bool = field(
        default=False,
        metadata={"help": "The official model selection: evaluate on the evaluation split every "
                  "--official_selection_steps steps and keep the checkpoint of best t2v R@1 (QA: accuracy) (the published numbers "
                  "carry this selection on the test split). Off: the final model, the cleaner protocol."},
    )
    official_selection_steps: int = field(default=150, metadata={"help": "Steps between evaluations (official 150)."})
    official_fp16_towers: bool = field(
        default=False,
        metadata={"help": "Train the CLIP towers' linear, convolution and projection weights, and their optimiser "
                  "state, in float16 as the official GPU runs do (LayerNorms and the HBI heads in float32). "
                  "Saved weights are widened back to float32. Not with --bf16/--fp16."},
    )

    def __post_init__(self):
        if self.official_selection:
            # The Trainer's own best-model machinery: evaluate and save in step, keep the best.
            self.eval_strategy = self.save_strategy = "steps"
            self.eval_steps = self.save_steps = self.official_selection_steps
            self.load_best_model_at_end = True
            self.metric_for_best_model = self.selection_metric
            self.greater_is_better = True
        super().__post_init__()
        if self.official_fp16_towers and (self.bf16 or self.fp16):
            raise ValueError("official_fp16_towers is the official precision on its own: drop --bf16/--fp16")
        if self.hbi_optimizer not in HBI_OPTIMIZERS:
            raise ValueError(f"hbi_optimizer must be one of {HBI_OPTIMIZERS}, got {self.hbi_optimizer!r}")


@dataclass
class VideoQATrainingArguments(HBITrainingArguments):
    """`HBITrainingArguments` with the official MSRVTT-QA recipe (`main_vqa.py` and the README
    command: 5 epochs, batch 32, lr 1e-4, coef_lr 1e-3, `--freeze_layer_num 0`)."""

    selection_metric = "accuracy"

    schedule_epochs: float | None = field(
        default=None,
        metadata={"help": "Warm-up + cosine horizon in epochs; None (official for QA): the actual training length."},
    )
    freeze_clip_embeddings: bool = field(
        default=True,
        metadata={"help": "Freeze CLIP's token and position embeddings, the vision tower's patch, class and "
                  "position embeddings and its pre-LayerNorm, as the official QA run does (--freeze_layer_num 0)."},
    )
