"""int8 weight-only layers: the arithmetic, end-to-end generation on random-tiny, and the refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine_fixtures import run, tiny_parts
from model_fixtures import tiny_models
from streaming.engine import Engine, EngineConfig
from streaming.errors import ConfigError
from streaming.models.quant import Int8Linear, quantize_gpt, quantize_models
from streaming.params import SamplingParams
from streaming.prompts import COARSE_HEAD_ROWS
from streaming.stream import SpeechRequest


def test_int8_linear_is_the_dequantised_matmul() -> None:
    """Int8Linear(x) equals x @ (q * scale)^T + b in fp32 (1e-4), rows slices the same output rows, and the
    per-channel rounding error stays under half a quantisation step."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 300)
    q = Int8Linear(lin, torch.float32)
    x = torch.randn(5, 64)
    deq = q.weight_int8.float() * q.scales[:, None]
    torch.testing.assert_close(q(x), x @ deq.T + lin.bias.detach(), rtol=0, atol=1e-4)
    torch.testing.assert_close(q(x, (10, 20)), (x @ deq.T + lin.bias.detach())[:, 10:20], rtol=0, atol=1e-4)
    assert ((deq - lin.weight.detach()).abs() <= q.scales[:, None] / 2 + 1e-7).all()
    many = torch.randn(3, 40, 64)  # 120 rows: a prefill, computed by the dense path
    torch.testing.assert_close(q(many), many @ deq.T + lin.bias.detach(), rtol=0, atol=1e-4)


def test_int8_models_generate_end_to_end() -> None:
    """random-tiny with int8 text and coarse GPTs: a greedy stream ends normally with as many samples as the
    fp32 models make (the token counts are fixed by the cap); greedy token agreement is reported, not asserted."""
    fp32_parts = tiny_parts()
    int8_parts = tiny_parts()
    quantize_models(int8_parts[0], "int8")
    assert isinstance(int8_parts[0].coarse.lm_head, Int8Linear)
    assert not isinstance(int8_parts[0].fine.lm_heads[0], Int8Linear)  # the fine model stays as it is
    req = SpeechRequest(text="Hello there, quantised.", return_tokens=True,
                        sampling=SamplingParams(greedy=True, max_semantic_tokens=40))
    results = []
    for parts in (fp32_parts, int8_parts):
        engine = Engine(*parts, EngineConfig(max_streams=2))
        engine.start()
        try:
            results.append(run(engine, req))
        finally:
            engine.stop()
    (audio32, _, _, done32), (audio8, _, _, done8) = results
    assert done8.reason == "end" and len(audio8) == len(audio32) > 0 and np.isfinite(audio8).all()
    same = np.mean(done32.tokens[0].semantic == done8.tokens[0].semantic)
    print(f"int8 vs fp32 greedy semantic agreement on random-tiny: {same:.0%}")


def test_quantize_refusals() -> None:
    """Not a mode, the fine model, and a model off the CPU are each refused naming what to do instead."""
    models = tiny_models()
    with pytest.raises(ConfigError, match="quantize: 'int4' is not one of none, int8"):
        quantize_models(models, "int4")
    with pytest.raises(ConfigError, match="fine model"):
        quantize_gpt(models.fine)
    with pytest.raises(ConfigError, match="on a GPU use --dtype bf16"):
        quantize_gpt(models.coarse.to("meta"))


def test_int8_coarse_head_rows() -> None:
    """The coarse stage's head slice works on an int8 head: logits of the 2,048 coarse rows only."""
    models = tiny_models()
    quantize_gpt(models.coarse)
    cache = models.coarse.new_cache(1)
    logits = models.coarse.prefill(torch.randint(0, 12_096, (1, 20)), cache, [0], rows=COARSE_HEAD_ROWS)
    assert logits.shape == (1, COARSE_HEAD_ROWS[1] - COARSE_HEAD_ROWS[0])
