"""What the official float16 CLIP towers do to training: the figures of docs/training.md.

    python benchmarks/official_fp16_update.py [--steps 20] [--batch 8]

One small random HBI (text tower 256 wide x 2 layers, vision 128 x 2 on 64-pixel frames, 12
frames, 24 words) trains `--steps` steps of the official optimiser (BertAdam, lr 1e-4 for the
heads and 1e-7 for CLIP, at the peak of the schedule) twice from the same weights on the same
batches: in float32, and with `use_official_fp16_towers` (CLIP weights and their Adam moments in
float16, as the official GPU runs). Printed per tower: the share of weight elements the run moved,
the norm of the total update against float32's, the cosine between the two updates, and the share
of second moments that are exactly zero (underflow); then the HBI heads' update agreement and the
losses.
"""

import argparse
import copy

import torch

from hbi_transformers import HBIConfig, HBIModel
from hbi_transformers.training.official_precision import use_official_fp16_towers
from hbi_transformers.training.optimization import BertAdam, hbi_parameter_groups

WORDS, FRAMES, IMAGE = 24, 12, 64


def small_config() -> HBIConfig:
    return HBIConfig(
        text_config=dict(vocab_size=1000, hidden_size=256, intermediate_size=1024, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=WORDS, bos_token_id=998, eos_token_id=999),
        vision_config=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                           image_size=IMAGE, patch_size=16),
        projection_dim=256,
        merge_attention_heads=4,
    )


def batches(count: int, batch_size: int, seed: int = 0) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    result = []
    for _ in range(count):
        input_ids = torch.randint(1, 998, (batch_size, WORDS), generator=generator)
        input_ids[:, 0], input_ids[:, -1] = 998, 999
        result.append(dict(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            pixel_values_videos=torch.randn(batch_size, FRAMES, 3, IMAGE, IMAGE, generator=generator),
            video_mask=torch.ones(batch_size, FRAMES, dtype=torch.long),
        ))
    return result


def train(model: HBIModel, data: list[dict]) -> list[float]:
    optimizer = BertAdam(hbi_parameter_groups(model, 1e-4, 1e-3, 0.2), betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2)
    model.banzhaf_teacher.requires_grad_(False)
    model.vision_model.embeddings.patch_embedding.requires_grad_(False)
    losses = []
    for inputs in data:
        loss = model(**inputs, return_loss=True).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.optimizer_state = optimizer.state
    return losses


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    initial = HBIModel(small_config()).train()
    data = batches(args.steps, args.batch)
    reference, official = copy.deepcopy(initial), copy.deepcopy(initial)
    use_official_fp16_towers(official)
    print(f"training {args.steps} steps twice (batch {args.batch}) ...", flush=True)
    reference_losses, official_losses = train(reference, data), train(official, data)

    rows = {}
    before = dict(initial.named_parameters())
    after_reference = dict(reference.named_parameters())
    for name, parameter in official.named_parameters():
        if not parameter.requires_grad:
            continue
        if parameter.dtype == torch.float16:
            part = "text tower" if name.startswith("text_") else "vision tower"
        else:
            part = "HBI heads" if not name.startswith(("text_", "vision_", "visual_", "logit")) else "CLIP fp32 (LN, emb.)"
        start = before[name].detach().double()
        update_official = parameter.detach().double() - start
        update_reference = after_reference[name].detach().double() - start
        state = official.optimizer_state.get(parameter, {})
        row = rows.setdefault(part, dict(elements=0, moved_official=0, moved_reference=0, official_sq=0.0,
                                         reference_sq=0.0, dot=0.0, zero_v=0, v_elements=0))
        row["elements"] += parameter.numel()
        row["moved_official"] += int((update_official != 0).sum())
        row["moved_reference"] += int((update_reference != 0).sum())
        row["official_sq"] += float(update_official.pow(2).sum())
        row["reference_sq"] += float(update_reference.pow(2).sum())
        row["dot"] += float((update_official * update_reference).sum())
        if "exp_avg_sq" in state:
            row["zero_v"] += int((state["exp_avg_sq"] == 0).sum())
            row["v_elements"] += state["exp_avg_sq"].numel()

    print("\n| part | weights | moved fp32 | moved fp16 run | update norm fp16/fp32 | cosine | Adam v == 0 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for part, row in rows.items():
        ratio = (row["official_sq"] / row["reference_sq"]) ** 0.5 if row["reference_sq"] else float("nan")
        cosine = row["dot"] / ((row["official_sq"] * row["reference_sq"]) ** 0.5 or float("nan"))
        zero_v = f"{row['zero_v'] / row['v_elements']:.1%}" if row["v_elements"] else "-"
        print(f"| {part} | {row['elements']:,} | {row['moved_reference'] / row['elements']:.1%} | "
              f"{row['moved_official'] / row['elements']:.1%} | {ratio:.2f} | {cosine:.3f} | {zero_v} |")
    print(f"\nloss at step 1: fp32 {reference_losses[0]:.4f}, fp16 towers {official_losses[0]:.4f}; "
          f"at step {args.steps}: fp32 {reference_losses[-1]:.4f}, fp16 towers {official_losses[-1]:.4f}")


if __name__ == "__main__":
    main()
