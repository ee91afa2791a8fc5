"""HBITrainer: transformers' Trainer with the official HBI training recipe and retrieval evaluation."""

import math
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.utils import logging

from .optimization import BertAdam, hbi_parameter_groups, warmup_cosine_schedule

logger = logging.get_logger(__name__)

HBI_OPTIMIZERS = ("bert_adam", "transformers")


@dataclass
class HBITrainingArguments(TrainingArguments):
    """`TrainingArguments` with the official HBI recipe as defaults (spec section 5): lr 1e-4 for
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
    eval_chunk_size: int = field(default=256, metadata={"help": "Texts x videos per scoring block at evaluation."})
    eval_dual_softmax: bool = field(default=False, metadata={"help": "Also report dual-softmax re-ranked metrics."})

    def __post_init__(self):
        super().__post_init__()
        if self.hbi_optimizer not in HBI_OPTIMIZERS:
            raise ValueError(f"hbi_optimizer must be one of {HBI_OPTIMIZERS}, got {self.hbi_optimizer!r}")


class LogitScaleClamp(TrainerCallback):
    """Clamps the model's log temperature after every optimiser step, as the official loop does."""

    def __init__(self, trainer: "HBITrainer"):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        with torch.no_grad():
            model.logit_scale.clamp_(max=args.max_logit_scale)


class HBITrainer(Trainer):
    """Trains `HBIModel` with the HBI objective over the global batch (the model gathers the
    features of all processes itself), the official optimiser, schedule and clipping, and logs the
    loss's parts next to the loss."""

    # compute_loss returns a per-batch mean: the Trainer divides it for gradient accumulation.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        model = self.accelerator.unwrap_model(self.model)
        model.banzhaf_teacher.requires_grad_(False)
        if self.args.freeze_patch_embedding:
            model.vision_model.embeddings.patch_embedding.requires_grad_(False)
        self.add_callback(LogitScaleClamp(self))
        self._loss_term_sums = defaultdict(float)
        self._loss_term_count = 0

    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        args = self.args
        groups = hbi_parameter_groups(opt_model, args.learning_rate, args.coef_lr, args.weight_decay)
        if args.hbi_optimizer == "bert_adam":
            self.optimizer = BertAdam(
                groups,
                lr=args.learning_rate,
                betas=(args.adam_beta1, args.adam_beta2),
                eps=args.adam_epsilon,
                weight_decay=args.weight_decay,
                max_grad_norm=args.per_tensor_max_grad_norm,
            )
        else:
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(args, opt_model)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            horizon = num_training_steps
            if self.args.schedule_epochs is not None and self.args.max_steps <= 0:
                steps_per_epoch = math.ceil(num_training_steps / self.args.num_train_epochs)
                horizon = max(1, round(steps_per_epoch * self.args.schedule_epochs))
            self.lr_scheduler = warmup_cosine_schedule(optimizer or self.optimizer, horizon, self.args.warmup_ratio)
        return self.lr_scheduler

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs, return_loss=True)
        if model.training:
            for name, value in outputs.loss_terms.items():
                self._loss_term_sums[name] += float(value)
            self._loss_term_count += 1
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._loss_term_count:
            for name, total in self._loss_term_sums.items():
                logs[name] = round(total / self._loss_term_count, 6)
            logs["logit_scale"] = round(self.accelerator.unwrap_model(self.model).logit_scale.detach().exp().item(), 4)
            self._loss_term_sums.clear()
            self._loss_term_count = 0
        super().log(logs, start_time)
