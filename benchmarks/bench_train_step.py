"""One HBI training step on a small random CLIP: forward with the loss, backward, BertAdam.

    python benchmarks/bench_train_step.py                # B = 8 and 32
    python benchmarks/bench_train_step.py --batch-sizes 8 --steps 7

Text tower 512 wide x 2 layers, vision tower 128 wide x 2 layers, 64 px frames (patch 16),
24 words, 12 frames, projection 512, the patch embedding frozen (as `HBITrainer` does), the
official parameter groups and BertAdam. Prints the median seconds of forward, backward and
optimiser over `--steps` steps after two warm-up steps (1 torch thread unless `--threads`), then
where the forward goes by module group (self time of the towers, temporal module, token merging,
weight heads, Banzhaf estimators; the rest of the forward is WTI and the loss) and the heaviest
operators of one profiled step.
"""

import argparse
import statistics
import time
from collections import defaultdict

import torch

WORDS, FRAMES, IMAGE_SIZE = 24, 12, 64


def build_model():
    from hbi_transformers import HBIConfig, HBIModel

    config = HBIConfig(
        text_config=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=2, num_attention_heads=8,
                         vocab_size=49408, max_position_embeddings=WORDS + 8),
        vision_config=dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=2,
                           image_size=IMAGE_SIZE, patch_size=16),
        projection_dim=512,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    model = HBIModel(config).train()
    # Frozen as HBITrainer freezes it by default (`freeze_patch_embedding`), as officially.
    model.vision_model.embeddings.patch_embedding.requires_grad_(False)
    return model


def make_batch(batch_size: int, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(5, WORDS + 1, (batch_size,), generator=generator)
    attention_mask = (torch.arange(WORDS)[None] < lengths[:, None]).long()
    input_ids = torch.randint(1, 49406, (batch_size, WORDS), generator=generator) * attention_mask
    input_ids[torch.arange(batch_size), lengths - 1] = 49407
    frame_counts = torch.randint(4, FRAMES + 1, (batch_size,), generator=generator)
    video_mask = (torch.arange(FRAMES)[None] < frame_counts[:, None]).long()
    pixels = torch.randn(batch_size, FRAMES, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    return dict(input_ids=input_ids, attention_mask=attention_mask, pixel_values_videos=pixels * video_mask[
        :, :, None, None, None], video_mask=video_mask, return_loss=True)


def module_groups(model) -> dict[str, list[torch.nn.Module]]:
    groups = {
        "text tower": [model.text_model, model.text_projection],
        "vision tower": [model.vision_model, model.visual_projection],
        "temporal module": [model.temporal],
        "token merging": [],
        "weight heads": [],
        "Banzhaf estimators": [model.banzhaf_teacher],
    }
    for level in model.levels:
        # The level walk calls the merge blocks' parts, not the blocks' forward.
        for block in (level.text_merge, level.video_merge):
            if block is not None:
                groups["token merging"] += [block.merge, block.attention]
        groups["weight heads"] += [level.text_weight_head, level.video_weight_head]
        groups["Banzhaf estimators"].append(level.banzhaf_student)
    return groups


def forward_breakdown(model, batch) -> dict[str, float]:
    """Seconds of one forward spent inside each module group (hooks around the modules)."""
    spent, started = defaultdict(float), {}
    handles = []
    for name, modules in module_groups(model).items():
        for module in modules:
            def before(module, args, name=name):
                started[id(module)] = time.perf_counter()

            def after(module, args, output, name=name):
                spent[name] += time.perf_counter() - started.pop(id(module))

            handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    begin = time.perf_counter()
    model(**batch).loss.backward()
    model.zero_grad(set_to_none=True)
    total = time.perf_counter() - begin
    for handle in handles:
        handle.remove()
    spent["forward + backward, all"] = total
    return dict(spent)


def time_steps(model, optimizer, batches) -> dict[str, float]:
    times = defaultdict(list)
    for batch in batches:
        begin = time.perf_counter()
        loss = model(**batch).loss
        forward_end = time.perf_counter()
        loss.backward()
        backward_end = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_end = time.perf_counter()
        times["forward"].append(forward_end - begin)
        times["backward"].append(backward_end - forward_end)
        times["optimiser"].append(step_end - backward_end)
        times["step"].append(step_end - begin)
    return {name: statistics.median(values) for name, values in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--top-ops", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from hbi_transformers.training.optimization import BertAdam, hbi_parameter_groups

    print(f"{args.threads} torch thread(s); median of {args.steps} steps after 2 warm-up steps")
    for batch_size in args.batch_sizes:
        model = build_model()
        optimizer = BertAdam(hbi_parameter_groups(model, 1e-4, 1e-3, 0.2))
        batches = [make_batch(batch_size, seed) for seed in range(args.steps + 2)]
        time_steps(model, optimizer, batches[:2])
        medians = time_steps(model, optimizer, batches[2:])
        print(f"\nB={batch_size}: " + ", ".join(f"{name} {seconds:.3f} s" for name, seconds in medians.items()))
        breakdown = forward_breakdown(model, batches[0])
        print("  forward by module group (one step, s):")
        for name, seconds in breakdown.items():
            print(f"    {name:<26} {seconds:.3f}")
        with torch.profiler.profile() as profiler:
            model(**batches[0]).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top_ops))


if __name__ == "__main__":
    main()
