"""Checkpoint reading and model choices: Suno-format variants load exactly, every failure is specific."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch

from model_fixtures import TINY_SEED, tiny_models, write_suno_tiny
from streaming.checkpoints import SUNO_FILES, read_suno_checkpoint, write_suno_checkpoint
from streaming.errors import ConfigError, WeightsError
from streaming.weights import CHOICES, load_models, resolve_device, resolve_dtype

KINDS = ("text", "coarse", "fine")


@pytest.fixture(scope="module")
def reference():
    """The seeded tiny models every directory below is written from."""
    return tiny_models(TINY_SEED)


@pytest.fixture(scope="module")
def suno_dir(tmp_path_factory: pytest.TempPathFactory, reference) -> Path:
    directory = tmp_path_factory.mktemp("suno")
    write_suno_tiny(directory)
    return directory


@pytest.fixture
def scratch(tmp_path: Path, suno_dir: Path) -> Path:
    """A private copy of the Suno directory that a test may damage."""
    return Path(shutil.copytree(suno_dir, tmp_path / "ckpt"))


def assert_same_weights(a, b) -> None:
    for kind in KINDS:
        sa, sb = getattr(a, kind).state_dict(), getattr(b, kind).state_dict()
        assert sa.keys() == sb.keys(), kind
        for key in sa:
            assert torch.equal(sa[key], sb[key]), f"{kind}: {key}"


def load(directory: Path, **kw):
    return load_models(str(directory), device="cpu", dtype="fp32", **kw)


def rewrite(path: Path, edit) -> None:
    """Load a checkpoint file, let `edit(ckpt)` change it, save it back."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    edit(ckpt)
    torch.save(ckpt, path)


# ------------------------------------------------------------------ formats
@pytest.mark.parametrize("kind", KINDS)
def test_suno_round_trip(tmp_path: Path, reference, kind: str) -> None:
    """write_suno_checkpoint -> read_suno_checkpoint gives the same config and torch.equal tensors, same keys."""
    model = getattr(reference, kind)
    write_suno_checkpoint(model, tmp_path / "m.pt")
    cfg, state = read_suno_checkpoint(tmp_path / "m.pt", kind)
    assert cfg == model.config
    expected = model.state_dict()
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


def test_load_models_from_suno_dir(suno_dir: Path, reference) -> None:
    """load_models(dir) returns weights torch.equal to the models written, in fp32 on cpu."""
    models = load(suno_dir)
    assert_same_weights(models, reference)
    assert models.dtype == torch.float32 and models.device.type == "cpu" and models.name == str(suno_dir)


def test_legacy_vocab_size_model_args(scratch: Path, reference) -> None:
    """Old files saying vocab_size (no input/output_vocab_size) load with both sizes = vocab_size, same weights."""
    def legacy(ckpt: dict) -> None:
        args = ckpt["model_args"]
        assert args["input_vocab_size"] == args["output_vocab_size"]  # coarse: 12,096 in and out
        args["vocab_size"] = args.pop("input_vocab_size")
        del args["output_vocab_size"]

    rewrite(scratch / "coarse.pt", legacy)
    cfg, _ = read_suno_checkpoint(scratch / "coarse.pt", "coarse")
    assert cfg.input_vocab_size == cfg.output_vocab_size == 12_096
    assert_same_weights(load(scratch), reference)


def test_orig_mod_prefix_and_attn_bias_ignored(scratch: Path, reference) -> None:
    """torch.compile's `_orig_mod.` key prefix is stripped and `.attn.bias` mask buffers dropped; weights equal."""
    def compiled(ckpt: dict) -> None:
        state = {f"_orig_mod.{k}": v for k, v in ckpt["model"].items()}
        state["_orig_mod.transformer.h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 8, 8))
        state["transformer.h.1.attn.bias"] = torch.tril(torch.ones(1, 1, 8, 8))
        ckpt["model"] = state

    for kind in KINDS:
        rewrite(scratch / SUNO_FILES["small"][kind], compiled)
    _, state = read_suno_checkpoint(scratch / "text.pt", "text")
    assert not any(k.startswith("_orig_mod.") or k.endswith(".attn.bias") for k in state)
    assert_same_weights(load(scratch), reference)


def test_large_layout_detected(tmp_path: Path, reference) -> None:
    """A directory with text_2.pt, coarse_2.pt, fine_2.pt (Bark large's names) loads with the same weights."""
    write_suno_tiny(tmp_path, size="large")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coarse_2.pt", "fine_2.pt", "text_2.pt"]
    assert_same_weights(load(tmp_path), reference)


# ------------------------------------------------------------------- errors
def test_missing_file_in_set(scratch: Path) -> None:
    """A Suno directory lacking fine.pt raises WeightsError naming the incomplete set and the missing file."""
    (scratch / "fine.pt").unlink()
    with pytest.raises(WeightsError, match=r"incomplete, missing .*fine\.pt"):
        load(scratch)


def test_truncated_file(scratch: Path) -> None:
    """A truncated coarse.pt raises WeightsError naming the file and suggesting it is truncated."""
    data = (scratch / "coarse.pt").read_bytes()
    (scratch / "coarse.pt").write_bytes(data[: len(data) // 3])
    with pytest.raises(WeightsError, match=r"coarse\.pt could not be read .*truncated"):
        load(scratch)


def test_not_a_checkpoint(scratch: Path) -> None:
    """A readable .pt without model_args/model raises WeightsError saying it is not a Suno Bark checkpoint."""
    torch.save({"weights": torch.zeros(3)}, scratch / "text.pt")
    with pytest.raises(WeightsError, match=r"text\.pt is not a Suno Bark checkpoint"):
        load(scratch)


def test_unknown_model_args(scratch: Path) -> None:
    """model_args with an unknown key raises WeightsError listing that key."""
    rewrite(scratch / "fine.pt", lambda ckpt: ckpt["model_args"].update(n_experts=4))
    with pytest.raises(WeightsError, match=r"unknown keys \['n_experts'\]"):
        load(scratch)


def test_missing_weight(scratch: Path) -> None:
    """A state dict lacking lm_head.weight raises WeightsError listing it as missing."""
    rewrite(scratch / "text.pt", lambda ckpt: ckpt["model"].pop("lm_head.weight"))
    with pytest.raises(WeightsError, match=r"text\.pt: weights do not match .*missing \['lm_head\.weight'\]"):
        load(scratch)


def test_shape_mismatch_names_tensor_and_shapes(scratch: Path) -> None:
    """A lm_head of the wrong width raises WeightsError naming the tensor and both shapes."""
    rewrite(scratch / "text.pt", lambda ckpt: ckpt["model"].update({"lm_head.weight": torch.zeros(10_048, 32)}))
    with pytest.raises(WeightsError) as err:
        load(scratch)
    msg = str(err.value)
    assert "text.pt" in msg
    assert "lm_head.weight" in msg and "10048, 32" in msg and "10048, 64" in msg, msg


def test_dir_without_checkpoint(tmp_path: Path) -> None:
    """An empty directory raises WeightsError listing both accepted layouts."""
    with pytest.raises(WeightsError, match=r"holds no Bark checkpoint: expected text\.pt.*config\.json"):
        load(tmp_path)


def test_unknown_model_name() -> None:
    """load_models('nope') raises ConfigError naming the value and listing every choice."""
    with pytest.raises(ConfigError, match=r"model: 'nope' is neither") as err:
        load_models("nope", device="cpu", dtype="fp32")
    for choice in CHOICES:
        assert choice in str(err.value)


@pytest.mark.parametrize("choice, repo, filename", [
    ("bark-small", "suno/bark", "text.pt"),
    ("hf:suno/bark-small", "suno/bark-small", "config.json"),
])
def test_hub_unreachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, choice: str, repo: str, filename: str
) -> None:
    """Offline with an empty cache: WeightsError names the repo, the file, the cache, HF_HUB_OFFLINE and --model."""
    import huggingface_hub.constants as hub_constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))  # read at import; patch the live value
    with pytest.raises(WeightsError) as err:
        load_models(choice, device="cpu", dtype="fp32", local_files_only=True)
    msg = str(err.value)
    for needle in (repo, filename, str(cache), "HF_HUB_OFFLINE", "--model"):
        assert needle in msg, (needle, msg)


# ---------------------------------------------------------- device and dtype
def test_resolve_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """Explicit devices pass through; auto picks cuda, then mps, then cpu; junk raises ConfigError naming device."""
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda:1")  # parsing only, nothing allocated
    mps = torch.backends.mps
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"device: 'gpu0' is not a torch device"):
        resolve_device("gpu0")


def test_resolve_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    """Names map to torch dtypes; auto follows the device; fp16 on cpu and unknown names raise ConfigError."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_dtype("fp32", cpu) is torch.float32
    assert resolve_dtype("bfloat16", cpu) is torch.bfloat16
    assert resolve_dtype("fp16", cuda) is torch.float16
    assert resolve_dtype(torch.float16, cpu) is torch.float16  # a torch dtype is taken as given
    assert resolve_dtype("auto", torch.device("mps")) is torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype("auto", cuda) is torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", cuda) is torch.bfloat16
    assert resolve_dtype("auto", cpu) in (torch.bfloat16, torch.float32)
    with pytest.raises(ConfigError, match="dtype: fp16 is for GPUs"):
        resolve_dtype("fp16", cpu)
    with pytest.raises(ConfigError, match=r"dtype: 'int8' is not one of auto, fp32, .*bf16"):
        resolve_dtype("int8", cpu)


def test_load_models_casts_dtype(suno_dir: Path, reference) -> None:
    """dtype='bf16' gives bf16 weights equal to the fp32 ones rounded to bf16 (torch.equal); random-tiny is seeded."""
    models = load_models(str(suno_dir), device="cpu", dtype="bf16")
    assert models.dtype is torch.bfloat16
    for kind in KINDS:
        for key, value in getattr(reference, kind).state_dict().items():
            assert torch.equal(getattr(models, kind).state_dict()[key], value.to(torch.bfloat16)), key
    a = load_models("random-tiny", device="cpu", dtype="fp32", seed=TINY_SEED)
    assert_same_weights(a, reference)
    b = load_models("random-tiny", device="cpu", dtype="fp32", seed=TINY_SEED + 1)
    assert not torch.equal(a.text.lm_head.weight, b.text.lm_head.weight)
    assert dataclasses.asdict(a.fine.config) == dataclasses.asdict(reference.fine.config)


def test_unreachable_hub_fails_fast_naming_every_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not offline, the hub unreachable (one probe, no retries): one WeightsError that names all three missing
    files, the hub CLI command to fetch them, and the weight-free way to try the server."""
    import huggingface_hub.constants as hub_constants

    import streaming.weights as weights

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    probes: list[str] = []
    monkeypatch.setattr(weights, "hub_reachable", lambda repo, filename, timeout=3.0: probes.append(filename) or False)
    with pytest.raises(WeightsError) as err:
        load_models("bark", device="cpu", dtype="fp32")
    msg = str(err.value)
    assert probes == ["text_2.pt"]  # one probe, then the answer
    for needle in ("text_2.pt, coarse_2.pt, fine_2.pt", "download suno/bark", "--model random-tiny --codec random"):
        assert needle in msg, (needle, msg)
