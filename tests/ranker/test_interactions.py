"""Tests for ranker.interactions: the registry contract, Hiformer's exact properties and the baselines' formulas.

Equivalence tests run in float64 so that a tolerance of 1e-9 separates "same computation" from "similar".
Sizes follow the reference test config: 9 input tokens (``N`` here, T in the package glossary) plus K task tokens,
D = 16, H = 2, d_k = d_v = 8, 2 layers, ranks 8 / 16.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from ranker.interactions import create, list_names, register
from ranker.interactions.attention import AttentionLayer, CompositeLinear, TokenLinear

pytestmark = pytest.mark.unit

N, D, H, DK, FFN, BATCH = 9, 16, 2, 8, 32, 32
ATTENTION = ["hiformer", "hetero_attention", "transformer"]
SMALL: dict[str, dict[str, Any]] = {
    "hiformer": {"num_heads": H, "head_dim": DK, "ffn_hidden": FFN, "rank_k": 8, "rank_v": 16},
    "hetero_attention": {"num_heads": H, "head_dim": DK, "ffn_hidden": FFN},
    "transformer": {"num_heads": H, "head_dim": DK, "ffn_hidden": FFN},
    "dcnv2": {"num_cross_layers": 2, "low_rank": 16, "hidden": (32, 16)},
    "dlrm": {"hidden": (32, 16)},
}
F64 = torch.float64


def build(name: str, num_tasks: int = 1, **overrides: Any) -> nn.Module:
    """Small instance of a registered interaction; skips DCN-v2 where torchrec is not installed."""
    if name == "dcnv2":
        pytest.importorskip("torchrec")
    return create(name, **{"num_tokens": N, "dim": D, "num_tasks": num_tasks, **SMALL.get(name, {}), **overrides})


def perturb_vectors_(module: nn.Module, scale: float = 0.3) -> nn.Module:
    """Moves LayerNorm affines and biases off their (1, 0) init so that equivalence tests also exercise them."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.dim() == 1 or name.endswith("bias"):
                param.add_(scale * torch.randn_like(param))
    return module


def tokens(batch: int = BATCH, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.randn(batch, N, D, dtype=dtype)


# ---------------------------------------------------------------- registry contract, every registered name


@pytest.mark.parametrize("num_tasks", [1, 2])
@pytest.mark.parametrize("name", list_names())
def test_output_shape_and_finite(name: str, num_tasks: int) -> None:
    model = build(name, num_tasks)
    out = model(tokens())
    assert out.shape == (BATCH, num_tasks, model.out_dim)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list_names())
def test_every_parameter_gets_a_gradient(name: str) -> None:
    model = build(name, num_tasks=2)
    out = model(tokens())
    # Different weights per task, so that a task token that fails to reach the output is noticed.
    (out * torch.arange(1.0, out.shape[1] + 1).view(1, -1, 1)).square().sum().backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None, f"no gradient for {pname}"
        assert param.grad.abs().sum() > 0, f"zero gradient for {pname}"


GRADIENT_VARIANTS = [
    ("hiformer", {"query_mode": "composite", "norm": "post"}),
    ("hiformer", {"rank_k": None, "rank_v": None, "value_dim": 4, "num_layers": 1}),
    ("dcnv2", {"low_rank": None, "structure": "parallel"}),
]


@pytest.mark.parametrize(("name", "kwargs"), GRADIENT_VARIANTS, ids=["hiformer_composite_q", "hiformer_full", "dcnv2"])
def test_every_parameter_gets_a_gradient_in_variants(name: str, kwargs: dict[str, Any]) -> None:
    model = build(name, num_tasks=2, **kwargs)
    model(tokens()).square().sum().backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"no gradient for {pname}"


@pytest.mark.parametrize("name", list_names())
def test_deterministic_given_seed(name: str) -> None:
    x = tokens()
    outs = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        outs.append(build(name, num_tasks=2)(x))
    assert torch.equal(outs[0], outs[1])
    assert not torch.allclose(outs[0], outs[2]), "the seed does not reach the initialisation"


def materialise_(model: nn.Module) -> nn.Module:
    """What torchrec's DistributedModelParallel does with meta parameters: to_empty, then every reset_parameters."""
    model.to_empty(device="cpu")
    with torch.no_grad():
        model.apply(lambda m: m.reset_parameters() if hasattr(m, "reset_parameters") else None)
    return model


@pytest.mark.parametrize("name", list_names())
def test_meta_build_materialises_like_eager_build(name: str) -> None:
    torch.manual_seed(3)
    model = build(name, device="meta")
    assert all(p.device.type == "meta" for p in model.parameters())
    torch.manual_seed(3)
    eager = build(name)
    torch.manual_seed(3)
    materialise_(model)
    for (pname, param), reference in zip(model.named_parameters(), eager.parameters(), strict=True):
        if name == "dcnv2" and pname.startswith("cross."):
            # torchrec draws its cross weights before the MLP's, reset_parameters after: same law, other draws.
            assert abs(param.std() / reference.std() - 1) < 0.1 if param.dim() > 1 else not param.any(), pname
        else:
            assert torch.equal(param, reference), pname


def test_attention_tasks_get_distinct_representations() -> None:
    for name in ATTENTION:
        out = build(name, num_tasks=2)(tokens())
        assert not torch.allclose(out[:, 0], out[:, 1]), name


def test_registry_rejects_unknown_and_duplicate_names_and_kwargs() -> None:
    with pytest.raises(ValueError, match="unknown interaction"):
        create("no_such_layer", num_tokens=N, dim=D, num_tasks=1)
    with pytest.raises(ValueError, match="already registered"):
        register("hiformer")(nn.Identity)
    with pytest.raises(TypeError):
        create("hiformer", num_tokens=N, dim=D, num_tasks=1, rank_q=4)


@pytest.mark.parametrize(
    "kwargs",
    [{"norm": "mid"}, {"query_mode": "shared"}, {"num_heads": 3, "head_dim": None}, {"num_tasks": 0}],
    ids=["norm", "query_mode", "heads", "tasks"],
)
def test_hiformer_rejects_bad_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        build("hiformer", **kwargs)


@pytest.mark.parametrize(("num_tokens", "ranks"), [(9, (32, 32)), (1, (None, None))])
def test_hiformer_auto_ranks(num_tokens: int, ranks: tuple[int | None, int | None]) -> None:
    """ "auto" = 2·D for keys and values, or the full matrix where that rank would not compress ((T + K)·D <= rank);
    the token FFNs default to 2·D hidden units (the attention baselines keep 4·D)."""
    model = create("hiformer", num_tokens=num_tokens, dim=D, num_tasks=1)
    layer: AttentionLayer = model.layers[0]
    assert (layer.key.rank, layer.value.rank) == ranks
    assert layer.ffn.fc1.weight.shape[-1] == 2 * D
    assert create("transformer", num_tokens=9, dim=D, num_tasks=1).layers[0].ffn.fc1.weight.shape[-1] == 4 * D


def test_hiformer_warns_about_ranks_that_cannot_compress() -> None:
    with pytest.warns(UserWarning, match="rank_v=160 >= "):
        build("hiformer", rank_v=(N + 1) * D)


def test_wrong_token_count_is_reported() -> None:
    with pytest.raises(ValueError, match="expected B x 9 x 16"):
        build("hiformer")(torch.randn(2, N + 1, D))


# ---------------------------------------------------------------- Hiformer property tests (float64)


def layer_norm(x: Tensor, norm: nn.LayerNorm) -> Tensor:
    """LayerNorm written out (biased variance), independent of the module under test."""
    mean = x.mean(-1, keepdim=True)
    var = (x - mean).square().mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def dense_matrix(proj: CompositeLinear) -> Tensor:
    """The effective ``(Q·out_dim) x (T·in_dim)`` matrix of a composite projection, full or factorised."""
    linears = [m for m in proj.proj.modules() if isinstance(m, nn.Linear)]
    matrix = linears[0].weight
    for linear in linears[1:]:
        matrix = linear.weight @ matrix
    return matrix


def test_tied_heterogeneous_layer_equals_vanilla_multihead_attention() -> None:
    """(a) Tying every per-token weight turns heterogeneous attention into vanilla MHA (torch's own module)."""
    model = perturb_vectors_(build("hetero_attention", num_layers=1, prune_last=False, dtype=F64))
    layer: AttentionLayer = model.layers[0]
    total = N + 1
    with torch.no_grad():
        for proj in (layer.query, layer.key, layer.value, layer.out, layer.ffn.fc1, layer.ffn.fc2):
            proj.weight.copy_(proj.weight[0].expand_as(proj.weight))
            if proj.bias is not None:
                proj.bias.copy_(proj.bias[0].expand_as(proj.bias))
    mha = nn.MultiheadAttention(D, H, bias=False, batch_first=True, dtype=F64)
    with torch.no_grad():
        # nn.Linear weights are (out, in); ours are (in, out).
        mha.in_proj_weight.copy_(torch.cat([layer.query.weight[0].T, layer.key.weight[0].T, layer.value.weight[0].T]))
        mha.out_proj.weight.copy_(layer.out.weight[0].T)

    x = torch.randn(BATCH, total, D, dtype=F64)
    h = layer_norm(x, layer.norm1)
    y = x + mha(h, h, h, need_weights=False)[0]
    fc1, fc2 = layer.ffn.fc1, layer.ffn.fc2
    expected = y + F.gelu(layer_norm(y, layer.norm2) @ fc1.weight[0] + fc1.bias[0]) @ fc2.weight[0] + fc2.bias[0]
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-10)

    # The same weights in the shared-weight "transformer" layer give the same result.
    vanilla: AttentionLayer = build("transformer", num_layers=1, prune_last=False, dtype=F64).layers[0]
    with torch.no_grad():
        for src, dst in zip(layer.parameters(), vanilla.parameters(), strict=True):
            dst.copy_(src if src.shape == dst.shape else src[0])
    torch.testing.assert_close(vanilla(x), expected, rtol=0, atol=1e-10)


def test_block_diagonal_composite_equals_heterogeneous_attention() -> None:
    """(b) Hiformer with block-diagonal composite key/value maps == heterogeneous attention (2 layers, pruned)."""
    hetero = perturb_vectors_(build("hetero_attention", num_tasks=2, dtype=F64))
    hiformer = build("hiformer", num_tasks=2, rank_k=None, rank_v=None, dtype=F64)
    with torch.no_grad():
        hiformer.task_tokens.copy_(hetero.task_tokens)
        hiformer.final_norm.load_state_dict(hetero.final_norm.state_dict())
        for src, dst in zip(hetero.layers, hiformer.layers, strict=True):
            for name in ("norm1", "norm2", "query", "ffn"):
                getattr(dst, name).load_state_dict(getattr(src, name).state_dict())
            for name in ("key", "value"):
                # Token j's block maps e_j to k_j only: torch.block_diag of the per-token (out, in) weights.
                getattr(dst, name).proj.weight.copy_(torch.block_diag(*getattr(src, name).weight.transpose(1, 2)))
            # Hiformer shares the output projection, so give every hetero token that same matrix.
            src.out.weight.copy_(dst.out.weight.expand_as(src.out.weight))
    x = tokens(dtype=F64)
    torch.testing.assert_close(hiformer(x), hetero(x), rtol=0, atol=1e-10)


@pytest.mark.filterwarnings("ignore:hiformer rank_:UserWarning")  # the oversized rank is the point here
@pytest.mark.parametrize("query_mode", ["hetero", "composite"])
def test_low_rank_with_sufficient_rank_reproduces_full_composite(query_mode: str) -> None:
    """(c) Rank >= T·H·d_k factors from the SVD of the full composite matrices give the full model's output."""
    total = N + 1
    full = perturb_vectors_(build("hiformer", rank_k=None, rank_v=None, query_mode=query_mode, dtype=F64))
    low = build("hiformer", rank_k=total * H * DK, rank_v=total * H * DK, query_mode=query_mode, dtype=F64)
    state = full.state_dict()
    for name, module in low.named_modules():
        if isinstance(module, CompositeLinear):
            # The pruned last layer's composite query is only (K·H·d_k) x (T·D): zero-pad the spare rank.
            u, s, vh = torch.linalg.svd(state.pop(f"{name}.proj.weight"), full_matrices=False)
            down, up = (
                torch.zeros_like(low.state_dict()[f"{name}.proj.0.weight"]),
                torch.zeros_like(low.state_dict()[f"{name}.proj.1.weight"]),
            )
            down[: len(s)] = s.sqrt()[:, None] * vh  # (r, T·D)
            up[:, : len(s)] = u * s.sqrt()  # (Q·H·d_k, r)
            state[f"{name}.proj.0.weight"], state[f"{name}.proj.1.weight"] = down, up
    low.load_state_dict(state)
    x = tokens(dtype=F64)
    torch.testing.assert_close(low(x), full(x), rtol=0, atol=1e-9)


def test_low_rank_init_matches_full_composite_scale() -> None:
    """The factorised composite starts with the full matrix's entry variance 1/(T·D), not r/(3·T·D) or so."""
    total = N + 1
    fan_in = total * D
    torch.manual_seed(0)
    low = CompositeLinear(total, D, total, H * DK, rank=64)
    full = CompositeLinear(total, D, total, H * DK)
    for proj in (low, full):
        variance = dense_matrix(proj).var().item()
        assert abs(variance * fan_in - 1) < 0.1, variance * fan_in


LAYER_VARIANTS = [
    ("hiformer", {"query_mode": "hetero"}),
    ("hiformer", {"query_mode": "composite"}),
    ("hiformer", {"rank_k": None, "rank_v": None, "norm": "post"}),
    ("hetero_attention", {}),
    ("transformer", {"norm": "post"}),
]


def load_unpruned_(pruned: nn.Module, full: nn.Module) -> None:
    """Loads an unpruned model's weights into the pruned twin, keeping the last layer's task-token rows."""
    state = pruned.state_dict()
    for key, value in full.state_dict().items():
        # Per-token weights (token dim first) and composite query rows (token-major output dim first): the pruned
        # layer keeps the trailing K tokens' slice.
        state[key] = value if value.shape == state[key].shape else value[value.shape[0] - state[key].shape[0] :]
    pruned.load_state_dict(state)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    LAYER_VARIANTS,
    ids=["hiformer", "hiformer_composite_query", "hiformer_full_post_ln", "hetero_attention", "transformer_post_ln"],
)
def test_pruned_last_layer_equals_full_layer_at_task_rows(name: str, kwargs: dict[str, Any]) -> None:
    """(d) Pruning the last layer to the K task rows is exact, for every projection kind and both norms."""
    full = perturb_vectors_(build(name, num_tasks=2, prune_last=False, dtype=F64, **kwargs))
    pruned = build(name, num_tasks=2, prune_last=True, dtype=F64, **kwargs)
    load_unpruned_(pruned, full)
    x = tokens(dtype=F64)
    torch.testing.assert_close(pruned(x), full(x), rtol=0, atol=1e-9)


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=st.sampled_from(ATTENTION),
    num_tokens=st.integers(1, 5),
    num_tasks=st.integers(1, 3),
    num_layers=st.integers(1, 2),
    num_heads=st.integers(1, 3),
    head_dim=st.integers(1, 4),
    value_dim=st.integers(1, 4),
    norm=st.sampled_from(["pre", "post"]),
    rank=st.one_of(st.none(), st.integers(1, 6)),
    composite_query=st.booleans(),
)
def test_pruning_is_exact_for_any_small_config(
    name: str,
    num_tokens: int,
    num_tasks: int,
    num_layers: int,
    num_heads: int,
    head_dim: int,
    value_dim: int,
    norm: str,
    rank: int | None,
    composite_query: bool,
) -> None:
    """Shapes and exact pruning hold for edge sizes too: one token, one head, d_k != d_v, width != H·d_k."""
    kwargs: dict[str, Any] = {
        "num_tokens": num_tokens,
        "dim": 4,
        "num_tasks": num_tasks,
        "num_layers": num_layers,
        "num_heads": num_heads,
        "head_dim": head_dim,
        "value_dim": value_dim,
        "ffn_hidden": 3,
        "norm": norm,
        "dtype": F64,
    }
    if name == "hiformer":
        kwargs |= {"rank_k": rank, "rank_v": rank, "query_mode": "composite" if composite_query else "hetero"}
    torch.manual_seed(0)
    full = perturb_vectors_(create(name, prune_last=False, **kwargs))
    pruned = create(name, prune_last=True, **kwargs)
    load_unpruned_(pruned, full)
    x = torch.randn(3, num_tokens, 4, dtype=F64)
    out = pruned(x)
    assert out.shape == (3, num_tasks, 4)
    torch.testing.assert_close(out, full(x), rtol=0, atol=1e-9)


def naive_hiformer_layer(x: Tensor, layer: AttentionLayer) -> Tensor:
    """One Hiformer layer for one example, token by token and head by head (x: T x D -> T x D)."""
    total = x.shape[0]
    w_k, w_v = dense_matrix(layer.key), dense_matrix(layer.value)
    pre = layer.norm_first

    def query(h: list[Tensor], i: int) -> Tensor:
        if isinstance(layer.query, TokenLinear):
            return h[i] @ layer.query.weight[i]
        return (dense_matrix(layer.query) @ torch.cat(h)).view(total, -1)[i]

    def ffn(y: Tensor, i: int) -> Tensor:
        fc1, fc2 = layer.ffn.fc1, layer.ffn.fc2
        return F.gelu(y @ fc1.weight[i] + fc1.bias[i]) @ fc2.weight[i] + fc2.bias[i]

    h = [layer_norm(x[i], layer.norm1) if pre else x[i] for i in range(total)]
    flat = torch.cat(h)  # every key and value reads all tokens
    keys = (w_k @ flat).view(total, -1)  # row j = [k_j^1, ..., k_j^H]
    values = (w_v @ flat).view(total, -1)
    d_k, d_v = keys.shape[1] // layer.num_heads, values.shape[1] // layer.num_heads
    out = []
    for i in range(total):
        q_i = query(h, i)
        heads = []
        for head in range(layer.num_heads):
            cols, vcols = slice(head * d_k, (head + 1) * d_k), slice(head * d_v, (head + 1) * d_v)
            scores = [float(q_i[cols] @ keys[j, cols]) / math.sqrt(d_k) for j in range(total)]
            top = max(scores)
            weights = [math.exp(score - top) for score in scores]
            heads.append(sum(w * values[j, vcols] for j, w in enumerate(weights)) / sum(weights))
        y = x[i] + torch.cat(heads) @ layer.out.weight
        if pre:
            y = y + ffn(layer_norm(y, layer.norm2), i)
        else:
            y = layer_norm(y, layer.norm1)
            y = layer_norm(y + ffn(y, i), layer.norm2)
        out.append(y)
    return torch.stack(out)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"query_mode": "composite", "value_dim": 4}, {"norm": "post", "rank_k": None, "rank_v": None}],
    ids=["default", "composite_query", "post_ln_full_rank"],
)
def test_vectorised_layer_equals_naive_loops(kwargs: dict[str, Any]) -> None:
    """(e) The einsum/reshape layer equals a per-example, per-token, per-head loop implementation."""
    model = perturb_vectors_(build("hiformer", num_tasks=2, num_layers=1, prune_last=False, dtype=F64, **kwargs))
    layer: AttentionLayer = model.layers[0]
    x = torch.randn(3, N + 2, D, dtype=F64)
    with torch.no_grad():
        expected = torch.stack([naive_hiformer_layer(example, layer) for example in x])
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-10)


# ---------------------------------------------------------------- complexity table (methods.md §1.7)


def layer_counts(name: str, prune: bool = False, **kwargs: Any) -> tuple[int, int]:
    """(attention parameters, MACs of one forward for one example) of one layer with T = N + 1 tokens."""
    model = build(name, num_layers=1, prune_last=prune, **kwargs)
    layer: AttentionLayer = model.layers[0]
    params = sum(p.numel() for m in (layer.query, layer.key, layer.value, layer.out) for p in m.parameters())
    with FlopCounterMode(display=False) as counter:
        layer(torch.randn(1, N + 1, D))
    return params, counter.get_total_flops() // 2


def test_complexity_table() -> None:
    """Parameters and MACs per layer follow §1.7 (T tokens incl. the task token, H·d_k = H·d_v = D, FFN f)."""
    t, d, f, tasks = N + 1, D, FFN, 1
    attention_macs, ffn_macs = 2 * t * t * d, 2 * t * d * f
    assert layer_counts("transformer") == (4 * d * d, 4 * t * d * d + attention_macs + ffn_macs)
    assert layer_counts("hetero_attention") == (4 * t * d * d, 4 * t * d * d + attention_macs + ffn_macs)
    full = layer_counts("hiformer", rank_k=None, rank_v=None)
    assert full == (
        2 * t * t * d * d + t * d * d + d * d,
        2 * t * t * d * d + 2 * t * d * d + attention_macs + ffn_macs,
    )
    r_k, r_v = 8, 16
    low = layer_counts("hiformer", rank_k=r_k, rank_v=r_v)
    assert low == (
        2 * t * d * (r_k + r_v) + t * d * d + d * d,
        2 * t * d * (r_k + r_v) + 2 * t * d * d + attention_macs + ffn_macs,
    )
    # Pruned last layer: Q and O for the task token only, K/V unchanged, one attention row, one FFN.
    pruned = layer_counts("hiformer", prune=True, rank_k=r_k, rank_v=r_v)
    assert pruned == (
        2 * t * d * (r_k + r_v) + tasks * d * d + d * d,
        2 * t * d * (r_k + r_v) + 2 * tasks * d * d + 2 * tasks * t * d + 2 * tasks * d * f,
    )
    # FFN parameters: shared 2df (+ biases) vs one FFN per token.
    ffn_params = {
        n: sum(p.numel() for p in build(n, num_layers=1, prune_last=False).layers[0].ffn.parameters())
        for n in ("transformer", "hiformer")
    }
    assert ffn_params == {"transformer": 2 * d * f + f + d, "hiformer": t * (2 * d * f + f + d)}


# ---------------------------------------------------------------- baselines against hand computations


def test_dlrm_dot_interaction_matches_pairwise_loop() -> None:
    model = build("dlrm", num_tasks=2, dtype=F64)
    x = tokens(batch=4, dtype=F64)
    seen: list[Tensor] = []
    model.over.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    out = model(x)
    rows = []
    for example in x:
        pairs = [example[i] @ example[j] for i in range(N) for j in range(i + 1, N)]
        rows.append(torch.cat([example[0], torch.stack(pairs)]))
    expected_input = torch.stack(rows)
    torch.testing.assert_close(seen[0], expected_input, rtol=0, atol=1e-12)
    torch.testing.assert_close(out, model.over(expected_input).unsqueeze(1).expand(-1, 2, -1), rtol=0, atol=1e-12)


@pytest.mark.parametrize("structure", ["stacked", "parallel"])
@pytest.mark.parametrize("low_rank", [None, 16])
def test_dcnv2_matches_cross_formula(structure: str, low_rank: int | None) -> None:
    """x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l, with W_l = U_l V_l when low-rank, then the deep MLP."""
    model = build("dcnv2", num_tasks=2, low_rank=low_rank, structure=structure, dtype=F64)
    with torch.no_grad():
        for bias in model.cross.bias:
            bias.normal_()  # torchrec initialises biases to zero, which would hide a missing bias term
    x0 = tokens(batch=4, dtype=F64).flatten(1)
    xl = x0
    for layer in range(2):
        if low_rank is None:
            weight = model.cross.kernels[layer]
        else:
            weight = model.cross.W_kernels[layer] @ model.cross.V_kernels[layer]
        xl = x0 * (xl @ weight.T + model.cross.bias[layer].reshape(-1)) + xl
    deep = torch.cat([xl, model.deep(x0)], 1) if structure == "parallel" else model.deep(xl)
    out = model(x0.view(4, N, D))
    assert out.shape == (4, 2, model.out_dim) and model.out_dim == deep.shape[1]
    torch.testing.assert_close(out, deep.unsqueeze(1).expand(-1, 2, -1), rtol=0, atol=1e-10)


@pytest.mark.parametrize("width", [1, 5, 13, 15, 16, 17, 40])
def test_softmax_last_matches_softmax_values_and_gradients(width: int) -> None:
    from ranker.interactions.attention import softmax_last

    torch.manual_seed(width)
    scores = (torch.randn(3, 2, 4, width, dtype=F64) * 5).requires_grad_()
    upstream = torch.randn(3, 2, 4, width, dtype=F64)
    weights = softmax_last(scores)
    (grad,) = torch.autograd.grad(weights, scores, upstream)
    # Independent reference: the closed form exp(s - logsumexp(s)) and its Jacobian-vector product.
    expected = (scores - scores.logsumexp(-1, keepdim=True)).exp()
    expected_grad = expected * (upstream - (upstream * expected).sum(-1, keepdim=True))
    assert weights.shape == scores.shape
    torch.testing.assert_close(weights, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("rows", [3, 12, 40])
def test_attend_equals_scaled_dot_product_attention(rows: int) -> None:
    from ranker.interactions.attention import attend

    torch.manual_seed(0)
    q, k, v = torch.randn(4, 2, rows, 8) * 3, torch.randn(4, 2, rows + 2, 8) * 3, torch.randn(4, 2, rows + 2, 5)
    expected = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double())
    torch.testing.assert_close(attend(q, k, v).double(), expected, rtol=1e-5, atol=1e-5)  # float32 rounding
    torch.testing.assert_close(attend(q.double(), k.double(), v.double()), expected, rtol=0, atol=1e-12)
