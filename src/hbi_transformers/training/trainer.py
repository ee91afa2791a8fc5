"""HBITrainer: transformers' Trainer with the official HBI training recipe, and retrieval or
question answering evaluation."""

import math
from collections import defaultdict

import torch
from transformers import Trainer, TrainerCallback
from transformers.utils import logging

from ..data import EmptyBatchError, HBIDataCollator
from .evaluation import RetrievalEvaluator, VideoQAEvaluator
from .optimization import BertAdam, hbi_parameter_groups, warmup_cosine_schedule

logger = logging.get_logger(__name__)


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
    ([`VideoQAEvaluator`]), both correct under several processes. With an [`HBIDataCollator`] as
    `data_collator`, batches whose every video is bad are skipped, and the count of skipped videos
    is reported at the end of training and of each evaluation. Evaluation decodes with
    `eval_data_collator`, by default the training collator's settings without augmentation.
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
        self.add_callback(LogitScaleClamp(self))
        self._loss_term_sums = defaultdict(float)
        self._loss_term_count = 0

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

    def get_train_dataloader(self):
        return SkipEmptyBatches(super().get_train_dataloader())

    def train(self, *args, **kwargs):
        result = super().train(*args, **kwargs)
        if isinstance(self.data_collator, HBIDataCollator):
            logger.warning(f"training videos: {self.data_collator.counter.report()}")
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


class SkipEmptyBatches:
    """Iterates a data loader, skipping the batches whose every video failed to decode (the
    collator has logged and counted them); everything else is the wrapped loader's."""

    def __init__(self, loader):
        self.loader = loader

    def __iter__(self):
        iterator = iter(self.loader)
        while True:
            try:
                yield next(iterator)
            except StopIteration:
                return
            except EmptyBatchError as error:
                logger.warning(f"skipping a batch: {error}")

    def __len__(self):
        return len(self.loader)

    def __getattr__(self, name):
        return getattr(self.loader, name)


def freeze_clip_embeddings(body) -> None:
    """What the official QA run's `--freeze_layer_num 0` freezes: every CLIP parameter outside the
    transformer layers and the final norms, projections and temperature."""
    for module in (body.text_model.embeddings, body.vision_model.embeddings, body.vision_model.pre_layrnorm):
        module.requires_grad_(False)
