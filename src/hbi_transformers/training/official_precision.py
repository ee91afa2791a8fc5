"""The official mixed precision of the CLIP towers, as an opt-in: on a GPU the official code casts
CLIP's linear, convolution and projection weights to float16 (`convert_weights`) and trains them
so, its Adam moments following the weights' dtype, while LayerNorms compute in float32 and
everything after CLIP runs in float32 (docs/training.md#the-official-float16-towers)."""

import torch
from torch import nn


def _layer_norm_in_float32(module, args):
    (hidden,) = args
    module._official_output_dtype = hidden.dtype
    return (hidden.float(),)


def _back_to_input_dtype(module, args, output):
    return output.to(module._official_output_dtype)


def _to_float16(module, args, output):
    return output.half()


def use_official_fp16_towers(body: nn.Module) -> int:
    """Casts the CLIP towers of an `HBIModel` (`body`) as the official code does and returns the
    number of parameters now in float16. Embedding tables, LayerNorms and the logit scale stay
    float32; the token embeddings are cast to float16 on output, as the official towers cast them
    to their dtype; a LayerNorm computes in float32 and returns its input's dtype. The HBI heads
    already cast the towers' outputs to their own dtype. Idempotent."""
    if getattr(body, "_official_fp16_towers", False):
        return sum(p.numel() for p in body.parameters() if p.dtype == torch.float16)
    towers = (body.text_model, body.vision_model, body.text_projection, body.visual_projection)
    for tower in towers:
        for module in tower.modules():
            if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                module.half()
            elif isinstance(module, nn.LayerNorm):
                module.register_forward_pre_hook(_layer_norm_in_float32)
                module.register_forward_hook(_back_to_input_dtype)
    body.text_model.embeddings.register_forward_hook(_to_float16)
    body.vision_model.embeddings.register_forward_hook(_to_float16)
    body._official_fp16_towers = True
    return sum(p.numel() for p in body.parameters() if p.dtype == torch.float16)


def float32_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights with float16 ones widened (losslessly) to float32, so that a saved
    model loads and runs without the hooks of `use_official_fp16_towers`."""
    return {name: tensor.float() if tensor.dtype == torch.float16 else tensor
            for name, tensor in model.state_dict().items()}
