"""Both decode-attention kernels (matmul: CPU default; sdpa: GPU default) give the same model outputs."""

from __future__ import annotations

import torch

from streaming.models.bundle import SHAPES, build_models


def greedy_run(model, kernel: str, prompts: list[torch.Tensor], steps: int):
    """Prefill each prompt in its own slot, then `steps` batched greedy decode steps; logits per step."""
    cache = model.new_cache(len(prompts), kernel=kernel)
    slots = [cache.allocate() for _ in prompts]
    last = torch.cat([model.prefill(p[None], cache, [s]) for p, s in zip(prompts, slots)])  # [B, V]
    history = [last]
    for _ in range(steps):
        last = model.decode(last.argmax(-1), cache, slots)
        history.append(last)
    return torch.stack(history)  # [steps + 1, B, V]


def test_sdpa_and_matmul_kernels_agree_on_cpu():
    """The GPU kernel path run on CPU: greedy tokens identical to the matmul path, logits within 1e-4."""
    model = build_models(SHAPES["tiny"], "random-tiny", seed=3).coarse
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 12_096, (n,), generator=g) for n in (5, 40, 17)]
    a = greedy_run(model, "matmul", prompts, 30)
    b = greedy_run(model, "sdpa", prompts, 30)
    assert torch.equal(a.argmax(-1), b.argmax(-1))
    assert (a - b).abs().max() <= 1e-4


def test_cpu_cache_is_fp32_for_bf16_weights():
    """On CPU the KV cache is fp32 even for bf16 weights (fast matmul attention); outputs keep the model dtype."""
    model = build_models(SHAPES["tiny"], "random-tiny", seed=3).text.to(torch.bfloat16)
    cache = model.new_cache(1)
    assert cache.dtype == torch.float32 and cache.kernel is None
    slot = cache.allocate()
    prompt = torch.randint(0, 129_600, (1, 513))
    logits = model.prefill(prompt, cache, [slot], merge_context=True)
    assert logits.dtype == torch.bfloat16
    assert model.decode(logits.argmax(-1), cache, [slot]).dtype == torch.bfloat16
