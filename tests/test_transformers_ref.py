"""Second reference: transformers' BarkModel, saved with save_pretrained and loaded by our loader.

A seeded tiny `BarkModel` (Bark's vocabularies, hidden 64, 2 layers, 2 heads, a
tiny EnCodec) is written in transformers' layout; `load_models(dir)` reads it
through the name mapping. Parameters must then be bit-identical, the logits of
all three models equal within float32 rounding, and greedy semantic tokens equal
to those of transformers' own `BarkSemanticModel.generate`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model_fixtures import write_transformers_tiny
from streaming.constants import (
    COARSE_INFER_TOKEN,
    SEMANTIC_INFER_TOKEN,
    SEMANTIC_PAD_TOKEN,
    TEXT_ENCODING_OFFSET,
    TEXT_PAD_TOKEN,
)
from streaming.offline import generate_semantic
from streaming.params import SamplingParams
from streaming.sampling import make_generator
from streaming.voices import bundled_voices_dir, load_voice
from streaming.weights import load_models

LOGIT_ATOL = 1e-4  # max |ours - transformers| logit (float32; observed ~1e-6)
N_TOKENS = 24  # greedy semantic tokens compared

# our (Suno) parameter names -> transformers' names, written out independently of the loader
OUR_TO_HF = [
    ("transformer.wtes.", "input_embeds_layers."),
    ("transformer.wte.", "input_embeds_layer."),
    ("transformer.wpe.", "position_embeds_layer."),
    ("transformer.ln_f.", "layernorm_final."),
    ("transformer.h.", "layers."),
    (".ln_1.", ".layernorm_1."),
    (".ln_2.", ".layernorm_2."),
    (".attn.c_attn.", ".attn.att_proj."),
    (".attn.c_proj.", ".attn.out_proj."),
    (".mlp.c_fc.", ".mlp.in_proj."),
    (".mlp.c_proj.", ".mlp.out_proj."),
]
SUBMODELS = {"text": "semantic", "coarse": "coarse_acoustics", "fine": "fine_acoustics"}


def hf_name(ours: str) -> str:
    for a, b in OUR_TO_HF:
        ours = ours.replace(a, b)
    return ours


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory):
    """(transformers BarkModel, our BarkModels loaded from its save_pretrained directory)."""
    directory = tmp_path_factory.mktemp("hf_tiny")
    hf = write_transformers_tiny(directory)
    assert (directory / "config.json").is_file() and list(directory.glob("*.safetensors"))
    return hf, load_models(str(directory), dtype="fp32", device="cpu")


@pytest.mark.parametrize("kind", list(SUBMODELS))
def test_parameters_equal_after_name_mapping(pair, kind: str) -> None:
    """Every parameter of our model equals (torch.equal) its transformers counterpart; none is left over."""
    hf, ours = pair
    theirs = {k: v for k, v in getattr(hf, SUBMODELS[kind]).state_dict().items() if not k.endswith(".attn.bias")}
    mine = getattr(ours, kind).state_dict()
    assert {hf_name(k) for k in mine} == set(theirs)
    for name, value in mine.items():
        assert torch.equal(value, theirs[hf_name(name)]), name


def test_fine_heads_tied_after_loading(pair) -> None:
    """The fine lm_heads (not stored by save_pretrained) are tied to wtes[i + 1] after loading (same storage)."""
    _, ours = pair
    fine = ours.fine
    for i, head in enumerate(fine.lm_heads):
        assert head.weight.data_ptr() == fine.transformer.wtes[i + 1].weight.data_ptr()


def _semantic_embeds(hf, text_ids: list[int], history: np.ndarray | None) -> torch.Tensor:
    """Bark's merged semantic prompt for the transformers model: [1, 257, C]."""
    text = np.full(256, TEXT_PAD_TOKEN)
    cut = np.asarray(text_ids[:256]) + TEXT_ENCODING_OFFSET
    text[: len(cut)] = cut
    hist = np.full(256, SEMANTIC_PAD_TOKEN)
    if history is not None:
        h = np.asarray(history)[-256:]
        hist[: len(h)] = h
    wte = hf.semantic.input_embeds_layer
    merged = wte(torch.as_tensor(text)[None]) + wte(torch.as_tensor(hist)[None])
    return torch.cat([merged, wte(torch.tensor([[SEMANTIC_INFER_TOKEN]]))], dim=1)


@torch.inference_mode()
def test_semantic_logits_prompt_and_decode_steps(pair) -> None:
    """Semantic prefill and 8 decode-step logits equal transformers' with past_key_values (atol 1e-4), same argmax."""
    hf, ours = pair
    ids = list(np.random.default_rng(0).integers(5, 400, 40))
    history = np.random.default_rng(1).integers(0, 10_000, 300)
    embeds = _semantic_embeds(hf, ids, history)
    out = hf.semantic(inputs_embeds=embeds, use_cache=True)
    prompt = np.concatenate([np.pad(np.asarray(ids) + TEXT_ENCODING_OFFSET, (0, 216), constant_values=TEXT_PAD_TOKEN),
                             history[-256:], [SEMANTIC_INFER_TOKEN]])
    cache = ours.text.new_cache(1)
    logits = ours.text.prefill(torch.as_tensor(prompt)[None], cache, [0], merge_context=True)
    for _ in range(8):
        ref = out.logits[0, -1]
        torch.testing.assert_close(logits[0], ref, rtol=0, atol=LOGIT_ATOL)
        tok = int(torch.argmax(ref[:10_001]))
        assert int(torch.argmax(logits[0, :10_001])) == tok
        out = hf.semantic(input_ids=torch.tensor([[tok]]), past_key_values=out.past_key_values, use_cache=True)
        logits = ours.text.decode(torch.tensor([tok]), cache, [0])


@pytest.mark.parametrize("voice_name", [None, "v2/en_speaker_6"])
def test_greedy_semantic_equals_transformers_generate(pair, voice_name: str | None) -> None:
    """generate_semantic (greedy, cap 24) equals BarkSemanticModel.generate(do_sample=False) exactly."""
    from transformers.models.bark.generation_configuration_bark import BarkSemanticGenerationConfig

    hf, ours = pair
    ids = list(np.random.default_rng(2).integers(5, 400, 30))
    voice = None if voice_name is None else load_voice(voice_name, voices_dir=bundled_voices_dir())
    input_ids = torch.zeros(1, 256, dtype=torch.long)
    input_ids[0, : len(ids)] = torch.tensor(ids)
    mask = (torch.arange(256) < len(ids)).long()[None]
    history = None if voice is None else {"semantic_prompt": torch.tensor(np.array(voice.semantic))}
    cfg = BarkSemanticGenerationConfig(max_new_tokens=N_TOKENS, do_sample=False)
    with torch.inference_mode():
        ref = hf.semantic.generate(input_ids, semantic_generation_config=cfg, history_prompt=history,
                                   attention_mask=mask)[0].numpy()
    assert len(ref) == N_TOKENS and SEMANTIC_PAD_TOKEN not in ref  # no EOS: the whole cap is compared
    params = SamplingParams(greedy=True, max_semantic_tokens=N_TOKENS)
    got = generate_semantic(ours, ids, voice, params, make_generator(0))
    assert np.array_equal(got, ref)


@torch.inference_mode()
def test_coarse_logits_prompt_and_decode_steps(pair) -> None:
    """Coarse prefill of an 887-token window and 6 decode steps equal transformers' (atol 1e-4), same argmax."""
    hf, ours = pair
    rng = np.random.default_rng(3)
    prompt = np.concatenate([rng.integers(0, 10_000, 256), [COARSE_INFER_TOKEN], rng.integers(10_000, 12_048, 630)])
    x = torch.as_tensor(prompt)[None]
    out = hf.coarse_acoustics(input_ids=x, use_cache=True)
    cache = ours.coarse.new_cache(1)
    logits = ours.coarse.prefill(x, cache, [0])
    for step in range(6):
        ref = out.logits[0, -1]
        torch.testing.assert_close(logits[0], ref, rtol=0, atol=LOGIT_ATOL)
        lo = 10_000 + 1024 * (step % 2)
        tok = lo + int(torch.argmax(ref[lo:lo + 1024]))
        assert lo + int(torch.argmax(logits[0, lo:lo + 1024])) == tok
        out = hf.coarse_acoustics(input_ids=torch.tensor([[tok]]), past_key_values=out.past_key_values, use_cache=True)
        logits = ours.coarse.decode(torch.tensor([tok]), cache, [0])


@torch.inference_mode()
def test_fine_logits_equal_transformers(pair) -> None:
    """FineGPT logits for codebooks 1..7 on two 512-frame windows equal BarkFineModel's (atol 1e-4), same argmax."""
    hf, ours = pair
    idx = torch.as_tensor(np.random.default_rng(4).integers(0, 1025, (2, 512, 8)))
    for cb in range(1, 8):
        ref = hf.fine_acoustics(cb, idx).logits
        got = ours.fine(cb, idx)
        torch.testing.assert_close(got, ref, rtol=0, atol=LOGIT_ATOL)
        assert torch.equal(got[..., :1024].argmax(-1), ref[..., :1024].argmax(-1))
