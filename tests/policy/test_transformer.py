"""The shared transformer core: config checks, masks, and the key/value cache."""

from __future__ import annotations

import pytest
import torch

from policy.transformer import Transformer, TransformerConfig


def test_config_names_the_bad_value() -> None:
    with pytest.raises(ValueError, match="n_head=3"):
        TransformerConfig(d_model=32, n_head=3)
    with pytest.raises(ValueError, match="dropout=1.5"):
        TransformerConfig(dropout=1.5)


def test_token_by_token_with_cache_equals_one_causal_pass() -> None:
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(d_model=32, n_layer=2, n_head=4, dropout=0.0)).eval()
    x = torch.randn(1, 7, 32)
    causal = torch.ones(7, 7, dtype=torch.bool).tril()[None, None]
    full = model(x, causal)
    cache = model.new_cache()
    steps = [model(x[:, :3], causal[..., :3, :3], cache)]  # a prefix chunk, then one by one
    for i in range(3, 7):
        steps.append(model(x[:, i:i + 1], causal[..., i:i + 1, : i + 1], cache))
    assert len(cache) == 7
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


def test_cache_keep_keeps_exactly_the_named_positions() -> None:
    """Every layer keeps the keys and values of the named positions, in order, and the next
    call attends to them alone. Fails on a keep() that keeps the first or last len(index)
    positions (checked with a monkeypatched keep)."""
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(d_model=16, n_layer=2, n_head=2, dropout=0.0)).eval()
    cache = model.new_cache()
    model(torch.randn(1, 5, 16), None, cache)
    keys = [k.clone() for k in cache.keys]
    values = [v.clone() for v in cache.values]
    kept = torch.tensor([0, 3, 4])
    cache.keep(kept)
    assert len(cache) == 3
    for layer in range(2):
        assert torch.equal(cache.keys[layer], keys[layer][:, :, kept])
        assert torch.equal(cache.values[layer], values[layer][:, :, kept])
    # the next token sees the kept positions only: the same as a cache filled with just them
    new = torch.randn(1, 1, 16)
    rebuilt = model.new_cache()
    rebuilt.keys = [k[:, :, kept] for k in keys]
    rebuilt.values = [v[:, :, kept] for v in values]
    assert torch.equal(model(new, None, cache), model(new, None, rebuilt))
    assert len(cache) == 4 and torch.equal(cache.keys[1][:, :, :3], keys[1][:, :, kept])


def test_mask_blocks_information_flow() -> None:
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(d_model=16, n_layer=2, n_head=2, dropout=0.0)).eval()
    x = torch.randn(1, 4, 16)
    mask = torch.ones(4, 4, dtype=torch.bool).tril()[None, None]
    y = x.clone()
    y[:, 3] = torch.randn(16)  # (a constant shift would vanish in LayerNorm)
    assert torch.allclose(model(x, mask)[:, :3], model(y, mask)[:, :3], atol=1e-6)
    assert not torch.allclose(model(x, None)[:, :3], model(y, None)[:, :3])


def test_attention_splits_heads_as_q_k_v_then_heads() -> None:
    """The qkv projection's features are laid out (three, head, head size); checked against
    attention written out by hand, head by head."""
    from policy.transformer import CausalSelfAttention

    torch.manual_seed(0)
    cfg = TransformerConfig(d_model=8, n_head=2, dropout=0.0)
    attn = CausalSelfAttention(cfg).eval()
    x = torch.randn(2, 5, 8)
    mask = torch.ones(5, 5, dtype=torch.bool).tril()[None, None]
    q, k, v = (x @ attn.qkv.weight.T + attn.qkv.bias).split(8, dim=-1)  # each (B, n, C)
    heads = []
    for h in range(2):
        cols = slice(4 * h, 4 * h + 4)
        scores = q[..., cols] @ k[..., cols].transpose(1, 2) / 2.0  # sqrt(head size 4)
        scores = scores.masked_fill(~mask[0], float("-inf"))
        heads.append(scores.softmax(-1) @ v[..., cols])
    expected = torch.cat(heads, dim=-1) @ attn.proj.weight.T + attn.proj.bias
    assert torch.allclose(attn(x, mask), expected, atol=1e-5)


def test_dropout_only_while_training() -> None:
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(d_model=16, n_layer=2, n_head=2, dropout=0.5))
    x = torch.randn(1, 4, 16)
    assert not torch.equal(model.train()(x), model(x))
    assert torch.equal(model.eval()(x), model(x))
