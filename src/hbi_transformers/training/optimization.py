"""The official HBI optimisation recipe: parameter groups, the "BertAdam" optimiser, and the
warm-up + cosine schedule over a fixed horizon (docs/training.md)."""

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

# Parameters of the CLIP towers: the official code names them `clip.*` and trains them at
# `learning_rate * coef_lr`. The official temporal transformer (`transformerClip`) is not among them.
CLIP_PARAMETER_PREFIXES = ("text_model.", "vision_model.", "text_projection.", "visual_projection.", "logit_scale")


def hbi_parameter_groups(model: torch.nn.Module, learning_rate: float, coef_lr: float, weight_decay: float) -> list[dict]:
    """The official four groups: CLIP or not x decayed or not. Only names containing "bias" skip
    weight decay (LayerNorm weights, embeddings, logit_scale and the estimators' Q/K/V are
    decayed, as officially). Frozen parameters are left out."""
    groups = {
        (is_clip, decayed): {"params": [], "lr": learning_rate * (coef_lr if is_clip else 1.0),
                             "weight_decay": weight_decay if decayed else 0.0}
        for is_clip in (True, False)
        for decayed in (True, False)
    }
    # A task model holds the retrieval body under its base_model_prefix; the groups are the body's.
    body_prefix = f"{getattr(model, 'base_model_prefix', '')}."
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            body_name = name.removeprefix(body_prefix)
            groups[(body_name.startswith(CLIP_PARAMETER_PREFIXES), "bias" not in name)]["params"].append(parameter)
    return [group for group in groups.values() if group["params"]]


class BertAdam(torch.optim.Optimizer):
    """Adam as the official HBI code runs it: no bias correction, each parameter tensor's gradient
    clipped to `max_grad_norm` before the moments are updated, and weight decay added to the
    update (`p -= lr * (m / (sqrt(v) + eps) + weight_decay * p)`). The learning rate schedule is
    left to a scheduler (see `warmup_cosine_schedule`).

    `foreach` (default) updates each parameter group with a few multi-tensor `torch._foreach_*`
    kernels instead of a dozen small ops per tensor, on batches of slices that stay in cache; the
    arithmetic, and so the update, is the same bits, in float32 and float16. With `fused` (default)
    float32 tensors instead go through torch's fused AdamW kernel, one pass per slice, 2.5x faster
    on a CPU: the same formula, its operations in another order (weight decay applied to the
    parameter before the step rather than added to the update; the bias correction switched off by
    a step count at which `beta ** step` is 0), so the parameters move within float32 rounding of
    the per-tensor loop's (tested; docs/training.md). Other tensors take the foreach path, or with
    `foreach=False` the per-tensor loop.
    """

    def __init__(self, params, lr: float = 1e-4, betas=(0.9, 0.98), eps: float = 1e-6, weight_decay: float = 0.2,
                 max_grad_norm: float = 1.0, foreach: bool = True, fused: bool = True):
        if lr < 0 or eps < 0 or not all(0 <= beta < 1 for beta in betas):
            raise ValueError(f"invalid BertAdam settings: lr={lr}, betas={betas}, eps={eps}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, max_grad_norm=max_grad_norm,
                                      foreach=foreach, fused=fused))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            parameters = [parameter for parameter in group["params"] if parameter.grad is not None]
            for parameter in parameters:
                state = self.state[parameter]
                if not state:
                    state["exp_avg"] = torch.zeros_like(parameter)
                    state["exp_avg_sq"] = torch.zeros_like(parameter)
            fused, rest = [], []
            for parameter in parameters:
                (fused if group.get("fused", True) and _has_fused_kernel(parameter) else rest).append(parameter)
            if fused:
                self._fused_update(group, fused, self._clipping_coefficients(group, fused))
            if rest and group.get("foreach", True):
                self._foreach_update(group, rest, self._clipping_coefficients(group, rest))
            elif rest:
                self._loop_update(group, rest)
        return loss

    def _loop_update(self, group: dict, parameters: list) -> None:
        """The official per-tensor sequence of operations."""
        beta1, beta2 = group["betas"]
        for parameter in parameters:
            if group["max_grad_norm"] > 0:
                torch.nn.utils.clip_grad_norm_(parameter, group["max_grad_norm"])
            grad = parameter.grad
            exp_avg, exp_avg_sq = self.state[parameter]["exp_avg"], self.state[parameter]["exp_avg_sq"]
            exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            update = exp_avg / (exp_avg_sq.sqrt() + group["eps"])
            if group["weight_decay"] > 0:
                update += group["weight_decay"] * parameter
            # As officially, the scaled update is rounded to the parameter's dtype first: a
            # float16 `add_(..., alpha=lr)` on CPU would round lr itself (1e-7 -> 1.19e-7).
            parameter.sub_(group["lr"] * update)

    @staticmethod
    def _clipping_coefficients(group: dict, parameters: list[torch.Tensor]) -> list[torch.Tensor] | None:
        """Each gradient's clipping factor on its own norm, as `clip_grad_norm_` on one tensor
        computes it, in the gradient's dtype (None without clipping)."""
        if group["max_grad_norm"] <= 0:
            return None
        grads = [parameter.grad for parameter in parameters]
        coefficients = [None] * len(grads)
        by_dtype: dict[torch.dtype, list[int]] = {}
        for index, grad in enumerate(grads):
            by_dtype.setdefault(grad.dtype, []).append(index)
        for indices in by_dtype.values():
            norms = torch.stack(torch._foreach_norm([grads[index] for index in indices]))
            clipped = (group["max_grad_norm"] / (norms + 1e-6)).clamp(max=1.0)
            for index, coefficient in zip(indices, clipped.unbind()):
                coefficients[index] = coefficient
        return coefficients

    def _moments(self, parameters):
        return ([parameter.grad for parameter in parameters], [self.state[parameter]["exp_avg"] for parameter in parameters],
                [self.state[parameter]["exp_avg_sq"] for parameter in parameters])

    def _fused_update(self, group: dict, parameters: list, coefficients) -> None:
        grads, exp_avgs, exp_avg_sqs = self._moments(parameters)
        # Read as the step count t of `1 - beta ** t`, the bias corrections: at this t both are 1.
        no_bias_correction = torch.tensor(float(1 << 30), device=parameters[0].device)
        floor = sqrt_floor(torch.float32, group["eps"]) if parameters[0].device.type == "cpu" else 0.0
        beta1, beta2 = group["betas"]
        for params, grads, exp_avgs, exp_avg_sqs, coefficients in _cache_sized_batches(
            parameters, grads, exp_avgs, exp_avg_sqs, coefficients
        ):
            if coefficients is not None:
                torch._foreach_mul_(grads, coefficients)
            if floor:
                # Subnormal second moments make the kernel's square root 9x slower on a CPU (rows
                # of the token embedding no batch has used for thousands of steps): raised to a
                # floor that leaves `sqrt(v) + eps` unchanged (`sqrt_floor`).
                torch._foreach_clamp_min_(exp_avg_sqs, floor)
            torch._fused_adamw_(
                params, grads, exp_avgs, exp_avg_sqs, [], [no_bias_correction] * len(params), lr=group["lr"],
                beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"], amsgrad=False,
                maximize=False,
            )

    def _foreach_update(self, group: dict, parameters: list, coefficients) -> None:
        grads, exp_avgs, exp_avg_sqs = self._moments(parameters)
        # Factors as tensors: the in-place multi-tensor multiply by a number would round it to a
        # float16 tensor's dtype first (0.9 -> 0.8999, 1e-7 -> 1.19e-7), which the per-tensor
        # ops do not.
        beta1, beta2, learning_rate = (
            torch.tensor(value, device=parameters[0].device) for value in (*group["betas"], group["lr"])
        )
        floors = {}
        if parameters[0].device.type == "cpu":
            floors = {v.dtype: sqrt_floor(v.dtype, group["eps"]) for v in exp_avg_sqs}
        for params, grads, exp_avgs, exp_avg_sqs, coefficients in _cache_sized_batches(
            parameters, grads, exp_avgs, exp_avg_sqs, coefficients
        ):
            if coefficients is not None:
                torch._foreach_mul_(grads, coefficients)
            torch._foreach_mul_(exp_avgs, beta1)
            torch._foreach_add_(exp_avgs, grads, alpha=1 - group["betas"][0])
            torch._foreach_mul_(exp_avg_sqs, beta2)
            torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - group["betas"][1])
            if floors:
                # The CPU's square root is several times slower on zeros and subnormals (most of
                # the token embedding's second moments: rows of words never seen): raise them to
                # a floor whose root vanishes next to eps, which leaves `sqrt(v) + eps` unchanged.
                denominators = torch._foreach_clamp_min(exp_avg_sqs, [floors[v.dtype] for v in exp_avg_sqs])
                torch._foreach_sqrt_(denominators)
            else:
                denominators = torch._foreach_sqrt(exp_avg_sqs)
            torch._foreach_add_(denominators, group["eps"])
            updates = torch._foreach_div(exp_avgs, denominators)
            if group["weight_decay"] > 0:
                torch._foreach_add_(updates, torch._foreach_mul(params, group["weight_decay"]))
            torch._foreach_mul_(updates, learning_rate)
            torch._foreach_sub_(params, updates)


def _has_fused_kernel(parameter: torch.Tensor) -> bool:
    # The kernel walks a parameter, its gradient and moments as flat memory: their layouts must
    # agree (a transposed view's gradient may be laid out row-major).
    return (parameter.dtype == torch.float32 and parameter.device.type in ("cpu", "cuda")
            and parameter.is_contiguous() and parameter.grad.is_contiguous())


def sqrt_floor(dtype: torch.dtype, eps: float) -> float:
    """A floor for Adam's second moments `v` that cannot change `sqrt(v) + eps` in `dtype`: a
    normal number whose root is a quarter of the spacing of floating-point numbers above `eps`, so
    the sum rounds to `eps` for any `v` below it, as it does for `v` = 0 (both are checked in
    `dtype`). 0 (no floor) where no such normal number exists, as for float16 or `eps` = 0."""
    if not dtype.is_floating_point or eps <= 0:
        return 0.0
    eps_tensor = torch.tensor(eps, dtype=dtype)
    spacing = float(torch.nextafter(eps_tensor, torch.tensor(math.inf, dtype=dtype)) - eps_tensor)
    floor = (spacing / 4) ** 2
    if floor < torch.finfo(dtype).tiny:
        return 0.0
    at_floor, at_zero = torch.tensor([floor, 0.0], dtype=dtype).sqrt().add_(eps)
    return floor if bool(at_floor == at_zero) else 0.0


# Elements per batch of BertAdam's multi-tensor update. Its dozen element-wise passes each stream
# every tensor through memory; on slices this size (a few MB with moments and temporaries) the
# passes after the first find the data in cache, and the temporaries are reused, not allocated
# and page-faulted at the size of the token embedding. A multiple of every SIMD width, so each
# element goes through the same kernel path as on the whole tensor: the update is the same bits.
BERT_ADAM_BATCH_ELEMENTS = 1 << 17


def _cache_sized_batches(*tensor_lists):
    """Yields the lists `(params, grads, exp_avgs, exp_avg_sqs, coefficients)` cut into batches of
    about `BERT_ADAM_BATCH_ELEMENTS` elements: a large tensor as flat slices (views, so in-place
    updates reach it), small tensors several to a batch. `coefficients` (one scalar tensor per
    parameter, or None) is repeated for each slice of its parameter."""
    *tensors, coefficients = tensor_lists
    batch = [[] for _ in range(5)]
    size = 0
    for index, group in enumerate(zip(*tensors)):
        coefficient = None if coefficients is None else coefficients[index]
        numel = group[0].numel()
        if numel <= BERT_ADAM_BATCH_ELEMENTS or not all(tensor.is_contiguous() for tensor in group):
            pieces = [(group, numel)]
        else:
            flat = [tensor.view(-1) for tensor in group]
            pieces = [
                (tuple(tensor[start : start + BERT_ADAM_BATCH_ELEMENTS] for tensor in flat),
                 min(BERT_ADAM_BATCH_ELEMENTS, numel - start))
                for start in range(0, numel, BERT_ADAM_BATCH_ELEMENTS)
            ]
        for piece, piece_size in pieces:
            for column, tensor in zip(batch, piece):
                column.append(tensor)
            batch[4].append(coefficient)
            size += piece_size
            if size >= BERT_ADAM_BATCH_ELEMENTS:
                yield (*batch[:4], None if coefficients is None else batch[4])
                batch, size = [[] for _ in range(5)], 0
    if batch[0]:
        yield (*batch[:4], None if coefficients is None else batch[4])


def warmup_cosine(progress: float, warmup: float) -> float:
    """The official multiplier at `progress` = step / t_total: linear warm-up, then half a cosine
    (which, past t_total, rises again: the official horizon is fixed whatever the epoch count)."""
    if progress < warmup:
        return progress / warmup
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup: float = 0.1) -> LambdaLR:
    """`total_steps` is the official t_total: optimisation steps of 5 epochs."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    return LambdaLR(optimizer, lambda step: warmup_cosine(step / total_steps, warmup))
