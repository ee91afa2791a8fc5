"""HBITrainer: transformers' Trainer with the official HBI training recipe, and retrieval or
question answering evaluation."""

import json
import math
from collections import defaultdict
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from ..data import VIDEO_REPORT_KEY, BadItemCounter, HBIDataCollator, VideoReport, is_empty_batch
from .checkpoints import LATEST, latest_complete_checkpoint
from .evaluation import RetrievalEvaluator, VideoQAEvaluator
from .official_precision import float32_state_dict, use_official_fp16_towers
from .optimization import BertAdam, hbi_parameter_groups, warmup_cosine_schedule

logger = logging.get_logger(__name__)

# Beside each checkpoint: the clips tried and failed so far, for a resumed run to count on.
VIDEO_COUNTS_FILE = "video_counts.json"


class LogitScaleClamp(TrainerCallback):
    """Clamps the model's log temperature after every optimiser step, as the official loop does."""

    def __init__(self, trainer: "HBITrainer"):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        body = self.trainer.accelerator.unwrap_model(self.trainer.model).base_model
        with torch.no_grad():
            body.logit_scale.clamp_(max=args.max_logit_scale)


class HBITrainer(Trainer):
    """Trains `HBIModel` or `HBIForVideoQuestionAnswering` with the HBI objective over the global
    batch (the model gathers the features of all processes itself), the official optimiser,
    schedule and clipping, and logs the loss's parts next to the loss.

    `evaluate()` runs `evaluator`: by default retrieval metrics for a retrieval model
    ([`RetrievalEvaluator`]) and answer accuracy for a question answering model
    ([`VideoQAEvaluator`]), both correct under several processes.

    With an [`HBIDataCollator`] as `data_collator`, no decoding failure crosses the data loader: a
    batch whose every video is bad reaches the training step empty and is skipped (by every process
    at once, so that they stay in step), and the `VideoReport` each batch carries is counted in
    `video_counter` in the training process, each clip once per run whatever the DataLoader
    workers and processes; `max_bad_fraction` is enforced on that count, and a run that trains no
    batch fails. The counts are reported at the end of training and of each evaluation.
    Evaluation decodes with `eval_data_collator`, by default the training collator's settings
    without augmentation.
    """

    # compute_loss returns a per-batch mean: the Trainer divides it for gradient accumulation.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        *args,
        eval_data_collator: HBIDataCollator | None = None,
        evaluator: RetrievalEvaluator | VideoQAEvaluator | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if eval_data_collator is None and isinstance(self.data_collator, HBIDataCollator):
            train_collator = self.data_collator
            eval_data_collator = HBIDataCollator(
                train_collator.processor,
                max_bad_fraction=train_collator.counter.max_bad_fraction,
                min_items=train_collator.counter.min_items,
                **train_collator.video_options,
            )
        self.eval_data_collator = eval_data_collator
        model = self.accelerator.unwrap_model(self.model)
        if evaluator is None and eval_data_collator is not None:
            evaluator = self._default_evaluator(model, eval_data_collator)
        self.evaluator = evaluator
        body = model.base_model
        body.banzhaf_teacher.requires_grad_(False)
        if self.args.freeze_patch_embedding:
            body.vision_model.embeddings.patch_embedding.requires_grad_(False)
        if getattr(self.args, "freeze_clip_embeddings", False):
            freeze_clip_embeddings(body)
        if self.args.official_fp16_towers:
            logger.warning(f"official float16 towers: {use_official_fp16_towers(body):,} parameters in float16")
        self.add_callback(LogitScaleClamp(self))
        self._loss_term_sums = defaultdict(float)
        self._loss_term_count = 0
        limits = {}
        if isinstance(self.data_collator, HBIDataCollator):
            limits = {"max_bad_fraction": self.data_collator.counter.max_bad_fraction,
                      "min_items": self.data_collator.counter.min_items}
        self.video_counter = BadItemCounter(**limits)
        self.trained_batches = self.skipped_batches = 0

    def _default_evaluator(self, model, collator: HBIDataCollator):
        if hasattr(model, "compute_answer_logits"):
            return VideoQAEvaluator(collator, batch_size=self.args.per_device_eval_batch_size)
        return RetrievalEvaluator(
            collator,
            batch_size=self.args.per_device_eval_batch_size,
            chunk_size=self.args.eval_chunk_size,
            dual_softmax=self.args.eval_dual_softmax,
        )

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

    def training_step(self, model, inputs, num_items_in_batch=None):
        report = inputs.pop(VIDEO_REPORT_KEY, None)
        empty = is_empty_batch(inputs)
        reports, any_empty = self._from_all_processes(report, empty)
        for each in reports:
            self.video_counter.merge(each)
        self.video_counter.check()
        if any_empty:
            # No backward: the optimiser step that follows leaves every parameter as it is.
            self.skipped_batches += 1
            logger.warning(f"skipping a batch whose every video failed ({self.video_counter.report(max_listed=3)})")
            return torch.zeros((), device=self.args.device)
        self.trained_batches += 1
        return super().training_step(model, inputs, num_items_in_batch)

    def _save_checkpoint(self, model, trial):
        if self.args.should_save:
            # Before the Trainer's own files, whose state file, written last, marks a checkpoint complete.
            folder = Path(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / VIDEO_COUNTS_FILE).write_text(json.dumps(self.video_counter.state_dict()))
        super()._save_checkpoint(model, trial)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if self.args.official_fp16_towers and state_dict is None:
            state_dict = float32_state_dict(self.accelerator.unwrap_model(self.model))
        super()._save(output_dir, state_dict)

    def _from_all_processes(self, report: VideoReport | None, empty: bool) -> tuple[list[VideoReport], bool]:
        """Every process's batch report, and whether any process's batch is empty (then all skip
        the step, since the loss gathers every process's features)."""
        reports = [report] if report is not None else []
        if self.accelerator.num_processes == 1 or not dist.is_initialized():
            return reports, empty
        gathered = [None] * self.accelerator.num_processes
        dist.all_gather_object(gathered, (report, empty))
        return [each for each, _ in gathered if each is not None], any(flag for _, flag in gathered)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """`Trainer.train`; `resume_from_checkpoint` may also be "latest": the newest complete
        checkpoint of `output_dir` (none: a fresh start)."""
        if resume_from_checkpoint in (True, LATEST):
            resume_from_checkpoint = latest_complete_checkpoint(self.args.output_dir)
            logger.warning(f"resuming from {resume_from_checkpoint or 'nothing: no complete checkpoint yet'}")
        if resume_from_checkpoint:
            counts = Path(resume_from_checkpoint, VIDEO_COUNTS_FILE)
            if counts.exists():
                self.video_counter.load_state_dict(json.loads(counts.read_text()))
        result = super().train(resume_from_checkpoint, *args, **kwargs)
        logger.warning(
            f"training videos: {self.video_counter.report()}; {self.trained_batches} batches trained, "
            f"{self.skipped_batches} skipped"
        )
        if self.trained_batches == 0 and not resume_from_checkpoint:
            raise RuntimeError(f"no batch could be trained: {self.video_counter.report()}")
        return result

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """The evaluator's metrics on `eval_dataset` (records with `video`, `caption` and
        `video_id`; for question answering also `answer`), logged with `metric_key_prefix`."""
        eval_dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if eval_dataset is None:
            raise ValueError("HBITrainer.evaluate needs an eval_dataset")
        if self.evaluator is None:
            raise ValueError("HBITrainer.evaluate needs an HBIDataCollator (data_collator or eval_data_collator) "
                             "or an evaluator")
        metrics = self.evaluator(
            self.accelerator.unwrap_model(self.model), eval_dataset, progress=not self.args.disable_tqdm
        )
        logger.warning(f"evaluation videos: {self.evaluator.collator.counter.report()}")
        if self.is_world_process_zero():
            logger.warning("\n" + self.evaluator.format(metrics))
        metrics = {f"{metric_key_prefix}_{name}": value for name, value in metrics.items()}
        self.log({name: value for name, value in metrics.items() if isinstance(value, (int, float))})
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._loss_term_count:
            for name, total in self._loss_term_sums.items():
                logs[name] = round(total / self._loss_term_count, 6)
            body = self.accelerator.unwrap_model(self.model).base_model
            logs["logit_scale"] = round(body.logit_scale.detach().exp().item(), 4)
            self._loss_term_sums.clear()
            self._loss_term_count = 0
        super().log(logs, start_time)


def freeze_clip_embeddings(body) -> None:
    """What the official QA run's `--freeze_layer_num 0` freezes: every CLIP parameter outside the
    transformer layers and the final norms, projections and temperature."""
    for module in (body.text_model.embeddings, body.vision_model.embeddings, body.vision_model.pre_layrnorm):
        module.requires_grad_(False)
