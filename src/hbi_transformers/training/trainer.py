"""HBITrainer: transformers' Trainer with the official HBI training recipe and retrieval evaluation."""

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.utils import logging

from ..data import EmptyBatchError, HBIDataCollator, VideoTextRecord, as_record, text_to_video_index, unique_videos
from ..models.hbi.losses import distributed_world_size
from .metrics.retrieval import dual_softmax_retrieval_metrics, format_metrics_table, retrieval_metrics
from ..models.hbi.modeling_hbi import HBITextOutput, HBIVideoOutput
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
    loss's parts next to the loss. `evaluate()` reports text-video retrieval metrics.

    With an [`HBIDataCollator`] as `data_collator`, batches whose every video is bad are skipped,
    and the count of skipped videos is reported at the end of training and of each evaluation.
    Evaluation uses `eval_data_collator`, by default the training collator's settings without
    augmentation.
    """

    # compute_loss returns a per-batch mean: the Trainer divides it for gradient accumulation.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, eval_data_collator: HBIDataCollator | None = None, **kwargs):
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

    def get_train_dataloader(self):
        return SkipEmptyBatches(super().get_train_dataloader())

    def train(self, *args, **kwargs):
        result = super().train(*args, **kwargs)
        if isinstance(self.data_collator, HBIDataCollator):
            logger.warning(f"training videos: {self.data_collator.counter.report()}")
        return result

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Retrieval metrics (t2v and v2t R@1/5/10/50, MdR, MnR; `dsl_` ones with
        `eval_dual_softmax`) on `eval_dataset`, records with `video`, `caption` and `video_id`."""
        eval_dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if eval_dataset is None:
            raise ValueError("HBITrainer.evaluate needs an eval_dataset")
        if self.eval_data_collator is None:
            raise ValueError("HBITrainer.evaluate needs an HBIDataCollator (as data_collator or eval_data_collator)")
        metrics = evaluate_retrieval(
            self.accelerator.unwrap_model(self.model),
            self.eval_data_collator,
            eval_dataset,
            batch_size=self.args.per_device_eval_batch_size,
            chunk_size=self.args.eval_chunk_size,
            dual_softmax=self.args.eval_dual_softmax,
            progress=not self.args.disable_tqdm,
        )
        logger.warning(f"evaluation videos: {self.eval_data_collator.counter.report()}")
        if self.is_world_process_zero():
            logger.warning("\n" + format_metrics_table(metrics))
        metrics = {f"{metric_key_prefix}_{name}": value for name, value in metrics.items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._loss_term_count:
            for name, total in self._loss_term_sums.items():
                logs[name] = round(total / self._loss_term_count, 6)
            logs["logit_scale"] = round(self.accelerator.unwrap_model(self.model).logit_scale.detach().exp().item(), 4)
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


def _rank_slice(items: list) -> list:
    if distributed_world_size() == 1:
        return items
    return items[torch.distributed.get_rank() :: distributed_world_size()]


def _merge_from_all_processes(local: dict) -> dict:
    """The union of every process's `{item index: result}`."""
    if distributed_world_size() == 1:
        return local
    shards = [None] * distributed_world_size()
    torch.distributed.all_gather_object(shards, local)
    return {index: value for shard in shards for index, value in shard.items()}


@torch.no_grad()
def encode_for_retrieval(model, collator: HBIDataCollator, records: list[VideoTextRecord], batch_size: int = 64,
                         progress: bool = True):
    """Encodes every caption and every distinct clip of `records` once (each process its share
    under torch.distributed). Returns `(text_outputs, video_outputs, text_to_video)` for the
    captions whose video decoded; clips that failed are counted by the collator and their captions
    left out."""
    device = next(model.parameters()).device
    clips = unique_videos(records)
    caption_video = text_to_video_index(records)

    video_rows = {}
    local_clips = _rank_slice(list(range(len(clips))))
    for start in tqdm(range(0, len(local_clips), batch_size), desc="encoding videos", disable=not progress):
        chunk = local_clips[start : start + batch_size]
        try:
            batch = collator.collate_videos([clips[p] for p in chunk])
        except EmptyBatchError as error:
            logger.warning(f"skipping a batch of videos: {error}")
            continue
        video = model.get_video_features(batch["pixel_values_videos"].to(device), batch["video_mask"].to(device))
        for row, position in enumerate(batch["clip_positions"].tolist()):
            video_rows[chunk[position]] = (video.video_embeds[row].cpu(), video.video_mask[row].cpu())
    video_rows = _merge_from_all_processes(video_rows)

    kept_clips = sorted(video_rows)
    new_position = {clip: index for index, clip in enumerate(kept_clips)}
    kept_captions = [index for index, clip in enumerate(caption_video) if clip in new_position]
    text_rows = {}
    local_captions = _rank_slice(list(range(len(kept_captions))))
    for start in tqdm(range(0, len(local_captions), batch_size), desc="encoding captions", disable=not progress):
        chunk = local_captions[start : start + batch_size]
        text = collator.processor(text=[records[kept_captions[i]].caption for i in chunk], return_tensors="pt")
        output = model.get_text_features(text["input_ids"].to(device), text["attention_mask"].to(device))
        for row, index in enumerate(chunk):
            text_rows[index] = (output.text_embeds[row].cpu(), output.attention_mask[row].cpu())
    text_rows = _merge_from_all_processes(text_rows)

    if not video_rows or not text_rows:
        raise ValueError("nothing to evaluate: no caption with a decodable video")
    text_outputs = HBITextOutput(
        text_embeds=torch.stack([text_rows[i][0] for i in range(len(kept_captions))]).to(device),
        attention_mask=torch.stack([text_rows[i][1] for i in range(len(kept_captions))]).to(device),
    )
    video_outputs = HBIVideoOutput(
        video_embeds=torch.stack([video_rows[c][0] for c in kept_clips]).to(device),
        video_mask=torch.stack([video_rows[c][1] for c in kept_clips]).to(device),
    )
    return text_outputs, video_outputs, [new_position[caption_video[i]] for i in kept_captions]


def evaluate_retrieval(model, collator: HBIDataCollator, records: Iterable[VideoTextRecord | Mapping],
                       batch_size: int = 64, chunk_size: int = 256, dual_softmax: bool = False,
                       progress: bool = True) -> dict[str, float | int]:
    """Text-to-video and video-to-text retrieval metrics of `model` on `records` (several captions
    per video allowed): each caption and each clip encoded once, scored with
    `HBIModel.compute_similarity` in blocks."""
    records = [as_record(record) for record in records]
    was_training = model.training
    model.eval()
    try:
        texts, videos, text_to_video = encode_for_retrieval(model, collator, records, batch_size, progress)
        similarity = model.compute_similarity(texts, videos, chunk_size=chunk_size).logits_per_text
    finally:
        model.train(was_training)
    metrics = retrieval_metrics(similarity, text_to_video)
    if dual_softmax:
        metrics.update(dual_softmax_retrieval_metrics(similarity, text_to_video))
    metrics["skipped_captions"] = len(records) - len(text_to_video)
    return metrics
