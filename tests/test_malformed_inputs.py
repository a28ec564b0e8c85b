"""Random malformed inputs against the public API: each call either raises a ValueError/TypeError
whose message starts with the name of one of its arguments, or returns what an independent float64
computation gives for the same (odd but valid) input. Any other exception fails."""

import re

import torch
from hypothesis import given, settings, strategies as st

import sglang_flashcore as fc
from cases import make_page_table
from sglang_flashcore.reference import attention_ref, merge_states_ref

PAGE = 4
BAD_INTS = (-1, 0, 2**31 + 7, 2**32 + 9)
BAD_FLOATS = (float("nan"), float("inf"), float("-inf"))
BAD_SCALARS = (0, -1, 1.5, True, "3", None, 2**40, float("nan"), float("inf"), 1e-30, [1])


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _table():
    pt = make_page_table("prefix", [9, 6], PAGE, seed=3)
    q = _rand(2, 4, 8)
    kc, vc = _rand(pt.num_slots, 2, 8, seed=1), _rand(pt.num_slots, 2, 8, seed=2)
    return pt, q, kc, vc


def _dense_decode(a):
    """Oracle of the page-table decode: each request's slots gathered, dense attention in float64."""
    q, kc, vc, r2t = a["q"], a["k_cache"], a["v_cache"], a["req_to_token"]
    outs, lses = [], []
    for b in range(q.shape[0]):
        slots = r2t[int(a["req_pool_indices"][b]), :int(a["seq_lens"][b])].long()
        o, s = attention_ref(q[b:b + 1].double()[None], kc[slots].double()[None], vc[slots].double()[None],
                             softmax_scale=a.get("softmax_scale"))
        outs.append(o[0, 0])
        lses.append(s[0, 0])
    return torch.stack(outs), torch.stack(lses)


def _call_attention(a):
    return fc.attention(a["q"], a["k"], a["v"], causal=a["causal"], softmax_scale=a["softmax_scale"])


def _oracle_attention(a):
    return attention_ref(a["q"].double(), a["k"].double(), a["v"].double(), causal=a["causal"],
                         softmax_scale=a["softmax_scale"])


def _call_ragged(a):
    return fc.attention(a["q"], a["k"], a["v"], causal=True, cu_seqlens_q=a["cu_seqlens_q"],
                        cu_seqlens_k=a["cu_seqlens_k"], max_seqlen_q=a["max_seqlen_q"])


def _oracle_ragged(a):
    return attention_ref(a["q"].double(), a["k"].double(), a["v"].double(), causal=True,
                         cu_seqlens_q=a["cu_seqlens_q"], cu_seqlens_k=a["cu_seqlens_k"])


def _call_table(a):
    return fc.paged_decode_table(a["q"], a["k_cache"], a["v_cache"], a["req_to_token"], a["req_pool_indices"],
                                 a["seq_lens"], page_size=a["page_size"], softmax_scale=a["softmax_scale"],
                                 check_bounds=a["check_bounds"])


def _call_from_sglang(a):
    layout = fc.from_sglang(a["req_to_token"], a["req_pool_indices"], a["seq_lens"], a["page_size"],
                            num_slots=a["num_slots"], validate=a["validate"], total_tokens=a["total_tokens"])
    return layout.token_slots()


def _oracle_from_sglang(a):
    rows, slots = [], []
    for b in range(a["seq_lens"].shape[0]):
        n = int(a["seq_lens"][b])
        rows += [b] * n
        slots += a["req_to_token"][int(a["req_pool_indices"][b]), :n].tolist()
    return torch.tensor(rows, dtype=torch.int64), torch.tensor(slots, dtype=torch.int64)


def _call_merge(a):
    return fc.merge_states(a["v_a"], a["s_a"], a["v_b"], a["s_b"])


def _oracle_merge(a):
    return merge_states_ref(a["v_a"].double(), a["s_a"].double(), a["v_b"].double(), a["s_b"].double())


def _call_decode_bytes(a):
    return (torch.tensor(fc.decode_bytes(a["kv_tokens"], a["batch"], a["num_kv_heads"], a["num_q_heads"],
                                         a["head_dim"])),)


def _oracle_decode_bytes(a):
    return (torch.tensor((2 * a["kv_tokens"] * a["num_kv_heads"] + 2 * a["batch"] * a["num_q_heads"])
                         * a["head_dim"] * 2),)


def targets():
    """name -> (valid arguments, call, oracle)."""
    pt, q, kc, vc = _table()
    table = dict(q=q, k_cache=kc, v_cache=vc, req_to_token=pt.req_to_token.long(),
                 req_pool_indices=pt.req_pool_indices, seq_lens=pt.seq_lens, page_size=PAGE, softmax_scale=0.3,
                 check_bounds=False)
    return {
        "attention": (dict(q=_rand(2, 3, 4, 8), k=_rand(2, 5, 2, 8, seed=1), v=_rand(2, 5, 2, 8, seed=2),
                           causal=True, softmax_scale=0.3), _call_attention, _oracle_attention),
        "ragged": (dict(q=_rand(5, 4, 8), k=_rand(7, 2, 8, seed=1), v=_rand(7, 2, 8, seed=2),
                        cu_seqlens_q=torch.tensor([0, 2, 5]), cu_seqlens_k=torch.tensor([0, 3, 7]), max_seqlen_q=3),
                   _call_ragged, _oracle_ragged),
        "paged_decode_table": (table, _call_table, _dense_decode),
        "from_sglang": (dict(req_to_token=pt.req_to_token.long(), req_pool_indices=pt.req_pool_indices,
                             seq_lens=pt.seq_lens, page_size=PAGE, num_slots=pt.num_slots, validate=False,
                             total_tokens=15), _call_from_sglang, _oracle_from_sglang),
        "merge_states": (dict(v_a=_rand(3, 2, 4), s_a=_rand(3, 2, seed=1), v_b=_rand(3, 2, 4, seed=2),
                              s_b=_rand(3, 2, seed=3)), _call_merge, _oracle_merge),
        "decode_bytes": (dict(kv_tokens=100, batch=2, num_kv_heads=2, num_q_heads=4, head_dim=8),
                         _call_decode_bytes, _oracle_decode_bytes),
    }


def mutate_tensor(t: torch.Tensor, kind: str, value, pos: int):
    if kind == "value":  # a single odd element
        t = t.clone()
        flat = t.view(-1)
        if flat.numel():
            if t.dtype.is_floating_point:
                flat[pos % flat.numel()] = value if isinstance(value, float) else float(value)
            elif not isinstance(value, float):
                flat[pos % flat.numel()] = value if t.dtype == torch.int64 else max(min(value, 2**31 - 1), -2**31)
        return t
    return {
        "dtype_int": lambda: t.to(torch.int32) if t.dtype.is_floating_point else t.float(),
        "dtype_half": lambda: t.half(),
        "drop_dim": lambda: t[0] if t.dim() else t,
        "add_dim": lambda: t[None],
        "shrink": lambda: t[:-1] if t.dim() else t,
        "scalar": lambda: t.reshape(-1)[:1].reshape(()) if t.numel() else t,
        "strided": lambda: t.transpose(0, -1) if t.dim() > 1 else t[::2],
        "list": lambda: t.tolist(),
        "none": lambda: None,
    }[kind]()


TENSOR_KINDS = ("value", "dtype_int", "dtype_half", "drop_dim", "add_dim", "shrink", "scalar", "strided", "list",
                "none")


def _names_of(args: dict):
    return set(args) | {"layout", "prefix_layout"}


def assert_clear(err: Exception, args: dict):
    msg = str(err)
    first = re.split(r"[\s:/(\[.]", msg, maxsplit=1)[0]
    assert first in _names_of(args), f"{type(err).__name__} does not name an argument: {msg!r}"


@settings(max_examples=300, deadline=None, derandomize=True)
@given(target=st.sampled_from(sorted(targets())), data=st.data())
def test_malformed_input_gives_clear_error_or_right_result(target, data):
    args, call, oracle = targets()[target]
    name = data.draw(st.sampled_from(sorted(args)), label="argument")
    if isinstance(args[name], torch.Tensor):
        kind = data.draw(st.sampled_from(TENSOR_KINDS), label="kind")
        value = data.draw(st.sampled_from(BAD_INTS + BAD_FLOATS), label="value")
        pos = data.draw(st.integers(0, 1000), label="pos")
        args[name] = mutate_tensor(args[name], kind, value, pos)
    else:
        args[name] = data.draw(st.sampled_from(BAD_SCALARS), label="scalar")
    try:
        got = call(args)
    except (ValueError, TypeError) as err:
        assert_clear(err, args)
        return
    want = oracle(args)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w.double(), rtol=1e-4, atol=1e-4, equal_nan=True)
