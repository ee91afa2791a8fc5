"""Reduced precision: under autocast only the CLIP towers run in 16 bits, everything after the
projections (temporal module, hierarchy, WTI, Banzhaf estimators, losses, answer heads) in float32,
as officially (docs/training.md#precision); a model whose weights are bfloat16 (or float16) runs,
and trains, on the CPU.

Tolerances against the float32 forward were measured on 20 random tiny models and batches. Under
autocast the towers' 16-bit arithmetic is the only source of difference; with 16-bit weights every
part adds its own. Largest absolute differences seen:

| run | logits (up to 5.7) | loss (about 5) |
|---|---|---|
| bf16 autocast | 0.039 | 0.12 |
| fp16 autocast | 0.0076 | 0.0062 |
| bf16 weights (seqTransf / seqLSTM / meanP) | 0.082 / 0.070 / 0.072 | 0.13 / 0.15 / 0.19 |
| fp16 weights | 0.010 | 0.0046 |
| QA (logits up to 0.023, loss about 7): bf16 autocast / bf16 weights | 0.00094 / 0.0013 | 0.089 / 0.076 |

The loss moves most where a small change of the merged tokens changes a DPC-KNN cluster
assignment (up to 0.8 on an action or event similarity); without such a change it stays
within 0.02.
"""

import pytest
import torch
from conftest import make_batch, tiny_config

from hbi_transformers import HBIModel
from hbi_transformers.models.hbi import modeling_hbi
from hbi_transformers.models.hbi.banzhaf_estimator import BanzhafEstimator
from hbi_transformers.models.hbi.configuration_hbi import video_qa_config
from hbi_transformers.models.hbi.modeling_hbi_qa import AnswerHead, HBIForVideoQuestionAnswering
from hbi_transformers.models.hbi.token_merging import MergedTokenAttention, TokenClusterMerge, cluster_tokens_dpc_knn
from hbi_transformers.models.hbi.wti import TokenWeightHead

HEAD_TYPES = (TokenWeightHead, TokenClusterMerge, MergedTokenAttention, BanzhafEstimator, AnswerHead)
# (dtype, logits tolerance, loss tolerance): about twice the largest differences measured.
AUTOCAST_CASES = [(torch.bfloat16, 0.1, 0.25), (torch.float16, 0.02, 0.02)]
WEIGHTS_CASES = [(torch.bfloat16, 0.2, 0.4), (torch.float16, 0.02, 0.02)]
QA_TOLERANCE = dict(logits=0.003, loss=0.2)
QA_LABELS = torch.tensor([0, 1, 2, 0])


def seeded_forward(model, batch, seed=0, **kwargs):
    # Clustering adds 1e-6 noise to densities: seed it so two runs are comparable.
    torch.manual_seed(seed)
    return model(**batch, **kwargs)


def retrieval_model(**overrides):
    torch.manual_seed(0)
    return HBIModel(tiny_config(**overrides)).eval()


def qa_model():
    torch.manual_seed(0)
    config = video_qa_config(tiny_config(), id2label={0: "red", 1: "green", 2: "blue"})
    return HBIForVideoQuestionAnswering(config).eval()


def output_dtypes(model, monkeypatch):
    """Records the dtype of every tensor that the heads (and the temporal module) output, and of
    every level's similarity matrix; returns `{what: {dtypes}}`."""
    seen = {}

    def record(what, tensors):
        for tensor in tensors if isinstance(tensors, tuple) else (tensors,):
            if tensor.is_floating_point():  # not the merges' cluster index
                seen.setdefault(what, set()).add(tensor.dtype)

    for name, module in model.named_modules():
        if isinstance(module, HEAD_TYPES) or name.endswith("temporal"):
            module.register_forward_hook(lambda module, args, output, name=name: record(name, output))
    similarity = modeling_hbi.weighted_token_interaction

    def recorded_similarity(text, video):
        result = similarity(text, video)
        record("weighted_token_interaction", result)
        return result

    monkeypatch.setattr(modeling_hbi, "weighted_token_interaction", recorded_similarity)
    return seen


@pytest.mark.parametrize("dtype, logits_tolerance, loss_tolerance", AUTOCAST_CASES)
def test_heads_run_in_float32_under_autocast(monkeypatch, dtype, logits_tolerance, loss_tolerance):
    model, batch = retrieval_model(), make_batch()
    reference = seeded_forward(model, batch, return_loss=True)
    seen = output_dtypes(model, monkeypatch)
    projections = []
    model.text_projection.register_forward_hook(lambda module, args, output: projections.append(output.dtype))
    with torch.autocast("cpu", dtype=dtype):
        out = seeded_forward(model, batch, return_loss=True)

    assert set(projections) == {dtype}  # the towers did run under autocast
    assert {
        "temporal", "levels.0.text_weight_head", "levels.1.video_merge.merge", "levels.2.text_merge.attention",
        "levels.2.banzhaf_student", "banzhaf_teacher", "weighted_token_interaction",
    } <= set(seen)
    assert all(dtypes == {torch.float32} for dtypes in seen.values()), seen
    for tensor in (out.loss, out.text_embeds, out.video_embeds, *out.level_logits_per_text, *out.loss_terms.values()):
        assert tensor.dtype == torch.float32
    torch.testing.assert_close(out.logits_per_text, reference.logits_per_text, atol=logits_tolerance, rtol=0)
    torch.testing.assert_close(out.loss, reference.loss, atol=loss_tolerance, rtol=0)


def test_autocast_leaves_the_heads_bit_for_bit(monkeypatch):
    """Given the same tower outputs, everything after them is the float32 computation exactly."""
    model, batch = retrieval_model(), make_batch()
    with torch.no_grad():
        texts = model.get_text_features(batch["input_ids"], batch["attention_mask"])
        videos = model.get_video_features(batch["pixel_values_videos"], batch["video_mask"])
    monkeypatch.setattr(model, "get_text_features", lambda *args, **kwargs: texts)
    monkeypatch.setattr(model, "get_video_features", lambda *args, **kwargs: videos)

    reference = seeded_forward(model, batch, return_loss=True)
    torch.manual_seed(1)
    reference_similarity = model.compute_similarity(texts, videos, chunk_size=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = seeded_forward(model, batch, return_loss=True)
        torch.manual_seed(1)
        similarity = model.compute_similarity(texts, videos, chunk_size=2)
    for ours, theirs in [
        (out.loss, reference.loss),
        *zip(out.level_logits_per_text, reference.level_logits_per_text),
        *zip(out.loss_terms.values(), reference.loss_terms.values()),
        *zip(similarity.level_logits_per_text, reference_similarity.level_logits_per_text),
    ]:
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize(
    "temporal_module, dtype, logits_tolerance, loss_tolerance",
    [(module, *WEIGHTS_CASES[0]) for module in ("seqTransf", "seqLSTM", "meanP")] + [("seqTransf", *WEIGHTS_CASES[1])],
)
def test_16_bit_model_runs_and_trains_on_cpu(tmp_path, temporal_module, dtype, logits_tolerance, loss_tolerance):
    model, batch = retrieval_model(temporal_module=temporal_module), make_batch()
    reference = seeded_forward(model, batch, return_loss=True)
    model.save_pretrained(tmp_path)
    loaded = HBIModel.from_pretrained(tmp_path, dtype=dtype).eval()
    assert {parameter.dtype for parameter in loaded.parameters()} == {dtype}

    out = seeded_forward(loaded, batch, return_loss=True)
    out.loss.backward()
    assert out.loss.dtype == out.logits_per_text.dtype == dtype
    for tensor in (out.loss, out.logits_per_text, *out.loss_terms.values()):
        assert tensor.isfinite().all()
    assert all(p.grad.isfinite().all() for p in loaded.parameters() if p.grad is not None)
    assert loaded.levels[2].banzhaf_student.conv_in.weight.grad is not None
    torch.testing.assert_close(out.logits_per_text.float(), reference.logits_per_text, atol=logits_tolerance, rtol=0)
    torch.testing.assert_close(out.loss.float(), reference.loss, atol=loss_tolerance, rtol=0)

    # `.to(dtype)` gives the same model, and inference runs too.
    converted = retrieval_model(temporal_module=temporal_module).to(dtype)
    torch.testing.assert_close(seeded_forward(converted, batch, return_loss=True).loss, out.loss, atol=0, rtol=0)
    with torch.no_grad():
        texts = loaded.get_text_features(batch["input_ids"], batch["attention_mask"])
        videos = loaded.get_video_features(batch["pixel_values_videos"], batch["video_mask"])
        assert loaded.compute_similarity(texts, videos).logits_per_text.isfinite().all()


def test_clustering_of_bfloat16_tokens_runs_in_float32():
    tokens = torch.randn(3, 10, 32, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, 6:] = 0
    torch.manual_seed(0)
    clusters = cluster_tokens_dpc_knn(tokens, 4, 3, mask)
    torch.manual_seed(0)
    assert torch.equal(clusters, cluster_tokens_dpc_knn(tokens.float(), 4, 3, mask))


def test_video_qa_heads_in_float32_under_autocast_and_bfloat16_model(monkeypatch):
    model, batch = qa_model(), make_batch()
    reference = seeded_forward(model, batch, labels=QA_LABELS)

    seen = output_dtypes(model, monkeypatch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = seeded_forward(model, batch, labels=QA_LABELS)
    assert {"answer_heads.0", "answer_heads.2", "hbi.levels.1.banzhaf_student"} <= set(seen)
    assert all(dtypes == {torch.float32} for dtypes in seen.values()), seen
    for tensor in (out.loss, out.logits, *out.level_logits, *out.loss_terms.values()):
        assert tensor.dtype == torch.float32
    torch.testing.assert_close(out.logits, reference.logits, atol=QA_TOLERANCE["logits"], rtol=0)
    torch.testing.assert_close(out.loss, reference.loss, atol=QA_TOLERANCE["loss"], rtol=0)

    converted = qa_model().to(torch.bfloat16)
    out = seeded_forward(converted, batch, labels=QA_LABELS)
    out.loss.backward()
    for tensor in (out.loss, out.logits, *out.loss_terms.values()):
        assert tensor.dtype == torch.bfloat16 and tensor.isfinite().all()
    torch.testing.assert_close(out.logits.float(), reference.logits, atol=QA_TOLERANCE["logits"], rtol=0)
    torch.testing.assert_close(out.loss.float(), reference.loss, atol=QA_TOLERANCE["loss"], rtol=0)
