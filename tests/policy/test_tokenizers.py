"""Tokenizers: action round trips and clipping, text, image and state tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from envs.spec import DEFAULT_ACTION_SPEC, ActionDim, ActionSpec
from policy.text import (
    SubwordTokenizer,
    TextEncoder,
    get_subword_tokenizer,
    get_text_encoder,
)
from policy.tokenizers.actions import MuLawActionTokenizer, UniformActionTokenizer, mu_law
from policy.tokenizers.images import (
    FiLMEfficientNet,
    PatchTokenizer,
    RT1ImageTokenizer,
    load_backbone,
    preprocess_images,
    random_shift,
)
from policy.tokenizers.state import StateTokenizer

SPEC = ActionSpec(dims=(ActionDim("x", -0.5, 2.0), ActionDim("y"), ActionDim("g", 0.0, 1.0)))


def _actions(n: int, spec: ActionSpec, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.from_numpy(spec.low) + torch.rand(n, len(spec), generator=g) * torch.from_numpy(
        spec.high - spec.low)


# ------------------------------------------------------------------------------ actions


def test_uniform_round_trip_within_half_a_bin() -> None:
    tok = UniformActionTokenizer.from_spec(SPEC, bins=256)
    a = _actions(5000, SPEC)
    bins = tok.encode(a)
    assert bins.dtype == torch.int64 and bins.min() >= 0 and bins.max() <= 255
    err = (tok.decode(bins) - a).abs()
    assert torch.all(err <= tok.bin_width() / 2 + 1e-6)
    # and encode(decode(bins)) is the identity on bins
    assert torch.equal(tok.encode(tok.decode(bins)), bins)


def test_uniform_clips_out_of_range_actions() -> None:
    tok = UniformActionTokenizer.from_spec(SPEC, bins=256)
    wild = torch.tensor([[-100.0, -7.0, -0.1], [100.0, 7.0, 1.1]])
    bins = tok.encode(wild)
    assert bins[0].tolist() == [0, 0, 0] and bins[1].tolist() == [255, 255, 255]
    decoded = tok.decode(bins)
    assert torch.all(decoded >= torch.from_numpy(SPEC.low))
    assert torch.all(decoded <= torch.from_numpy(SPEC.high))


def test_uniform_bounds_from_data_percentiles() -> None:
    stats = {"action": {"p01": [-0.2, -0.1, 0.3], "p99": [0.2, -0.1, 0.9]}}
    tok = UniformActionTokenizer.from_spec(SPEC, bins=256, stats=stats, bounds="data")
    # y never varies in the data (p01 == p99): it keeps the spec's bounds instead of ~0 width
    assert tok.low.tolist() == pytest.approx([-0.2, -1.0, 0.3])
    assert tok.high.tolist() == pytest.approx([0.2, 1.0, 0.9])
    a = torch.tensor([[0.1, 0.5, 0.5]])
    assert torch.all((tok.decode(tok.encode(a)) - a).abs() <= tok.bin_width() / 2 + 1e-6)
    with pytest.raises(ValueError, match="p01"):
        UniformActionTokenizer.from_spec(SPEC, stats=None, bounds="data")
    with pytest.raises(ValueError, match="'percentile'"):
        UniformActionTokenizer.from_spec(SPEC, bounds="percentile")


def test_mu_law_round_trip_within_half_a_bin_in_companded_space() -> None:
    tok = MuLawActionTokenizer.from_spec(DEFAULT_ACTION_SPEC, bins=1024, mu=100, m=256)
    a = _actions(5000, DEFAULT_ACTION_SPEC, seed=1)
    bins = tok.encode(a)
    assert bins.min() >= 0 and bins.max() <= 1023
    decoded = tok.decode(bins)
    err = (tok.compand(decoded) - tok.compand(a)).abs()
    assert torch.all(err <= tok.bin_width() / 2 + 1e-5)
    assert torch.equal(tok.encode(decoded), bins)


def test_mu_law_spends_more_bins_near_zero() -> None:
    tok = MuLawActionTokenizer.from_spec(DEFAULT_ACTION_SPEC)

    def width_at(x: float) -> float:  # value-space width of the bin holding x
        b = tok.encode(torch.full((1, 8), x))
        return float((tok.decode(b + 1) - tok.decode(b))[0, 1])

    assert width_at(0.01) < width_at(0.9) / 10
    assert float(mu_law(torch.tensor(256.0))) == pytest.approx(1.0)  # M maps to the edge


def test_mu_law_clips_out_of_range_actions() -> None:
    tok = MuLawActionTokenizer.from_spec(DEFAULT_ACTION_SPEC)
    wild = torch.tensor([[-50.0] * 8, [50.0] * 8])
    decoded = tok.decode(tok.encode(wild))
    assert torch.allclose(decoded[0], torch.full((8,), -1.0), atol=0.01)
    assert torch.allclose(decoded[1], torch.full((8,), 1.0), atol=0.01)


# ------------------------------------------------------------------------------ text


def test_text_encoder_caches_by_string_and_is_shared(text_encoder) -> None:
    assert get_text_encoder() is text_encoder
    before = text_encoder.cache_size()
    a = text_encoder.encode(["stack the purple zyxquv on the teal flurb", "pick up the red block"])
    assert a.shape == (2, 384) and a.dtype == torch.float32
    assert text_encoder.cache_size() == before + 1  # only the new string was encoded
    b = text_encoder.encode(["pick up the red block"])
    assert torch.equal(a[1], b[0])
    c = text_encoder.encode(["pick up the blue block"])
    assert not torch.allclose(b, c)  # embeddings tell instructions apart
    with pytest.raises(TypeError, match="list of strings"):
        text_encoder.encode("pick up the red block")


def test_text_embedding_depends_on_the_string_alone() -> None:
    """Bit for bit the same embedding whether a string is first encoded in a batch with longer
    strings (padding) or alone, at 2 torch threads or at 1: a policy's cached embedding must
    not depend on what it was first encoded with. Fails when encode() runs the
    missing strings as one padded batch at the caller's thread count (differences ~1e-7)."""
    texts = ["push the red cube to the left",
             "place the small green cylinder on the yellow plate, then let go of it gently"]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        batched = TextEncoder().encode(texts)
        torch.set_num_threads(1)
        alone = TextEncoder().encode(texts[:1])
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(batched[0], alone[0])


def test_text_caches_are_bounded_and_eviction_changes_nothing() -> None:
    """A server meeting endless distinct instructions keeps at most max_cache of them; an
    evicted string comes back with the same bits, and recently used ones stay cached."""
    enc = TextEncoder(max_cache=2)
    first = enc.encode(["pick up the red block"])
    enc.encode(["lift the blue cube", "pick up the red block"])  # red block is newest now
    enc.encode(["push the green slab"])  # evicts the least recently used: the blue cube
    assert enc.cache_size() == 2 and list(enc._cache) == ["pick up the red block",
                                                         "push the green slab"]
    enc.encode(["lift the blue cube", "a fourth instruction"])
    assert enc.cache_size() == 2
    assert torch.equal(enc.encode(["pick up the red block"])[0], first[0])  # re-embedded
    enc.reserve(3)  # training makes room for its store's instructions, never less room
    enc.reserve(1)
    enc.encode(["lift the blue cube", "a fourth instruction", "push the green slab"])
    assert enc.max_cache == 3 and enc.cache_size() == 3
    sub = SubwordTokenizer(max_cache=1)
    ids = sub.ids("pick up the red block")
    sub.ids("push the green slab")
    assert len(sub._cache) == 1 and sub.ids("pick up the red block") == ids
    with pytest.raises(ValueError, match="max_cache=0"):
        TextEncoder(max_cache=0)


def test_subword_tokens_handle_unknown_words_and_padding() -> None:
    tok = get_subword_tokenizer()
    ids, mask = tok.encode(["pick up the qwzxvbnm-9000 thingamajig", "push"], max_len=8)
    assert ids.shape == (2, 8) and mask.dtype == torch.bool
    assert mask[0].all()  # truncated to max_len
    assert mask[1].sum() == 3  # [CLS] push [SEP], then padding
    assert torch.all(ids[1, 3:] == 0) and torch.all(ids < tok.vocab_size)
    assert ids[0, 0] == ids[1, 0]  # both start with [CLS]


def test_subword_tokenizer_names_a_missing_model_folder(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        SubwordTokenizer(str(tmp_path)).ids("hello")


# ------------------------------------------------------------------------------ images


def test_preprocess_resizes_and_rejects_float_images() -> None:
    x = preprocess_images(torch.full((2, 96, 96, 3), 255, dtype=torch.uint8), 64)
    assert x.shape == (2, 3, 64, 64) and torch.allclose(x, torch.ones_like(x))
    with pytest.raises(ValueError, match="uint8"):
        preprocess_images(torch.zeros(2, 96, 96, 3), 64)


def test_random_shift_moves_whole_sequences_together() -> None:
    torch.manual_seed(0)
    x = torch.rand(4, 3, 3, 16, 16)
    frames_equal = x.clone()
    frames_equal[:, 1:] = frames_equal[:, :1]  # three identical frames per sample
    out = random_shift(frames_equal, pad=2)
    assert out.shape == x.shape
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])
    assert not torch.equal(out, frames_equal)  # 4 samples, 25 offsets: some shift happened
    assert torch.equal(random_shift(x, pad=0), x)


def test_rt1_image_tokens_start_unconditioned_and_feel_film_after_training() -> None:
    torch.manual_seed(0)
    tok = RT1ImageTokenizer(d_model=32, text_dim=384, channels=(8, 16, 32), strides=(2, 1),
                            blocks=1, expand=2, num_tokens=8)
    images = torch.rand(2, 3, 32, 32)
    t1, t2 = torch.randn(2, 384), torch.randn(2, 384)
    out = tok(images, t1)
    assert out.shape == (2, 8, 32)
    assert torch.allclose(out, tok(images, t2))  # FiLM starts as the identity
    film = tok.backbone.blocks[0].film.proj
    torch.nn.init.normal_(film.weight, std=0.1)
    assert not torch.allclose(tok(images, t1), tok(images, t2))


def test_rt1_text_norm_rescales_unit_norm_embeddings_and_can_be_turned_off() -> None:
    kwargs = dict(d_model=32, text_dim=384, channels=(8, 16, 32), strides=(2, 1), blocks=1,
                  expand=2, num_tokens=8)
    text = torch.nn.functional.normalize(torch.randn(2, 384), dim=-1)  # as MiniLM gives it
    normed = RT1ImageTokenizer(**kwargs).text_norm(text)
    assert normed.std(dim=-1).min() > 0.9  # unit variance per embedding, not ~0.05
    raw = RT1ImageTokenizer(**kwargs, text_norm=False)
    assert isinstance(raw.text_norm, torch.nn.Identity)
    assert torch.equal(raw.text_norm(text), text)
    assert raw(torch.rand(2, 3, 32, 32), text).shape == (2, 8, 32)


def test_patch_tokenizer_cuts_96px_into_36_tokens_with_positions() -> None:
    tok = PatchTokenizer(d_model=16, image_size=96, patch_size=16, channels=8)
    out = tok(torch.zeros(2, 3, 96, 96))
    assert out.shape == (2, 36, 16)
    # identical patches differ only by their row/column encodings
    assert not torch.allclose(out[0, 0], out[0, 7])
    with pytest.raises(ValueError, match="patch grid"):
        tok(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="multiple of patch_size"):
        PatchTokenizer(d_model=16, image_size=100)


def test_patch_tokenizer_film_is_identity_at_start_and_then_reads_the_condition() -> None:
    torch.manual_seed(0)
    plain = PatchTokenizer(d_model=16, image_size=32, patch_size=16, channels=8)
    torch.manual_seed(0)
    film = PatchTokenizer(d_model=16, image_size=32, patch_size=16, channels=8, cond_dim=4)
    film.load_state_dict(plain.state_dict(), strict=False)  # same convs, fresh FiLM
    images = torch.rand(2, 3, 32, 32)
    cond_a, cond_b = torch.randn(2, 4), torch.randn(2, 4)
    assert torch.allclose(film(images, cond_a), plain(images), atol=1e-6)
    for layer in film.films:
        torch.nn.init.normal_(layer.proj.weight, std=0.5)
    a, b = film(images, cond_a), film(images, cond_b)
    assert a.shape == (2, 4, 16) and not torch.allclose(a, b)
    # each sample's patches use that sample's condition only
    assert torch.allclose(film(images[:1], cond_a[:1]), a[:1], atol=1e-6)
    with pytest.raises(ValueError, match="cond is required"):
        film(images)
    with pytest.raises(ValueError, match="cond is required"):
        plain(images, cond_a)


def test_load_backbone_from_safetensors_with_a_prefix(tmp_path) -> None:
    torch.manual_seed(0)
    src = FiLMEfficientNet((8, 16), (2,), blocks=1, expand=2, cond_dim=4)
    path = tmp_path / "backbone.safetensors"
    save_file({f"encoder.{k}": v.contiguous() for k, v in src.state_dict().items()
               if "film" not in k}, str(path))
    dst = FiLMEfficientNet((8, 16), (2,), blocks=1, expand=2, cond_dim=4)
    untrained = load_backbone(dst, path)
    assert untrained and all("film" in k for k in untrained)
    assert torch.equal(dst.stem[0].weight, src.stem[0].weight)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_backbone(dst, tmp_path / "nowhere.pt")
    torch.save({"unrelated.weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="no weight"):
        load_backbone(dst, tmp_path / "other.pt")


# ------------------------------------------------------------------------------ state


def test_state_tokenizer_normalizes_with_stats_and_floors_constant_dims() -> None:
    mean = np.arange(8, dtype=np.float32)
    std = np.array([2.0] * 7 + [0.0], dtype=np.float32)  # the last dim never varied
    tok = StateTokenizer(state_dim=8, d_model=16, stats={"state": {"mean": mean, "std": std}})
    state = torch.from_numpy(mean + 2.0)
    z = tok.normalize(state)
    assert torch.allclose(z[:7], torch.ones(7))
    assert z[7] == pytest.approx(10.0)  # 2 / floored std, clipped to 10
    assert tok(state[None]).shape == (1, 16)
    with pytest.raises(ValueError, match=r"\(8,\)"):
        StateTokenizer(state_dim=8, d_model=16,
                       stats={"state": {"mean": [0.0] * 3, "std": [1.0] * 3}})
