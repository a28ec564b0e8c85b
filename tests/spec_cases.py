"""Verify batches shaped like SGLang's TARGET_VERIFY, and an independent float64 oracle.

A request's N draft tokens sit after its cached context in its ``req_to_token`` row (positions
P .. P+N-1, as SGLang assigns them before verify), their K/V already stored in the pool. The
draft tree is a parent list (parents precede children, as SGLang orders draft tokens); a draft
token sees its ancestors and itself. ``flat_mask`` is the mask in the layout SGLang hands
backends: per request N rows of P + N entries (context, then draft tokens).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch

from cases import PageTable, make_page_table


def chain_parents(n: int) -> List[int]:
    return [i - 1 for i in range(n)]


def random_parents(rng: random.Random, n: int) -> List[int]:
    """A random draft tree of n tokens in SGLang's order: the root first, each parent before its child."""
    return [-1] + [rng.randrange(i) for i in range(1, n)]


def tree_visibility(parents: Sequence[int]) -> torch.Tensor:
    """bool [N, N]: token i sees token j when j is i or one of its ancestors."""
    n = len(parents)
    vis = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        j = i
        while j >= 0:
            vis[i, j] = True
            j = parents[j]
    return vis


def flat_mask(prefix: Sequence[int], visibility: Sequence[torch.Tensor]) -> torch.Tensor:
    """SGLang's flattened verify mask for requests with these contexts and draft visibilities."""
    parts = []
    for p, vis in zip(prefix, visibility):
        n = vis.shape[0]
        parts.append(torch.cat([torch.ones(n, p, dtype=torch.bool), vis], dim=1).reshape(-1))
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool)


@dataclass
class VerifyCase:
    table: PageTable  # rows hold context then draft slots
    prefix: List[int]  # P_b
    num_draft: int  # N
    visibility: List[torch.Tensor]  # bool [N, N] per request
    q: torch.Tensor  # [B*N, Hq, D]
    k_cache: torch.Tensor  # [slots, Hkv, D]
    v_cache: torch.Tensor
    out_cache_loc: torch.Tensor  # [B*N] the draft tokens' slots, request-major

    @property
    def batch(self) -> int:
        return len(self.prefix)

    @property
    def k_draft(self) -> torch.Tensor:
        return self.k_cache[self.out_cache_loc]

    @property
    def v_draft(self) -> torch.Tensor:
        return self.v_cache[self.out_cache_loc]

    def custom_mask(self) -> torch.Tensor:
        return flat_mask(self.prefix, self.visibility).to(self.q.device)

    def draft_mask(self) -> torch.Tensor:
        return torch.stack(self.visibility).to(self.q.device)


def make_verify_case(prefix: Sequence[int], num_draft: int, page: int, hq: int, hkv: int, d: int, *,
                     trees: bool, shared: bool, dtype=torch.float32, device="cpu", seed: int = 0) -> VerifyCase:
    """``trees``: a random draft tree per request (else chains); ``shared``: the contexts share a
    page-aligned prefix of the shortest one's length (a radix-cache hit)."""
    rng = random.Random(seed)
    lengths = [p + num_draft for p in prefix]
    table = make_page_table("prefix" if shared else "none", lengths, page, seed=seed, shared=min(prefix))
    parents = [random_parents(rng, num_draft) if trees else chain_parents(num_draft) for _ in prefix]
    g = torch.Generator().manual_seed(seed)
    k_cache = torch.randn(table.num_slots, hkv, d, generator=g).to(dtype).to(device)
    v_cache = torch.randn(table.num_slots, hkv, d, generator=g).to(dtype).to(device)
    q = torch.randn(len(prefix) * num_draft, hq, d, generator=g).to(dtype).to(device)
    loc = torch.tensor([s for row, p in zip(table.rows, prefix) for s in row[p:p + num_draft]], dtype=torch.long,
                       device=device)
    return VerifyCase(table, list(prefix), num_draft, [tree_visibility(p) for p in parents], q, k_cache, v_cache, loc)


def draft_positions(case: VerifyCase) -> torch.Tensor:
    """[B*N] each draft token's position: its context length plus its depth in the draft tree."""
    return torch.cat([p + vis.sum(dim=1) - 1 for p, vis in zip(case.prefix, case.visibility)])


def verify_oracle(case: VerifyCase, softmax_scale: float, softcap: float = 0.0,
                  window: int = -1) -> Tuple[torch.Tensor, torch.Tensor]:
    """float64 attention of every draft token over its context and its visible draft tokens
    (``softcap`` > 0: each scaled score s as softcap * tanh(s / softcap); ``window`` >= 0: only
    keys at positions >= its own position - window)."""
    n, hq = case.num_draft, case.q.shape[1]
    group = hq // case.k_cache.shape[1]
    out = torch.zeros(case.q.shape, dtype=torch.float64)
    lse = torch.zeros(case.q.shape[:-1], dtype=torch.float64)
    for b, p in enumerate(case.prefix):
        slots = torch.tensor(case.table.rows[b][:p + n], dtype=torch.long)
        keys = case.k_cache.cpu()[slots].double().repeat_interleave(group, dim=1)  # [P+N, Hq, D]
        values = case.v_cache.cpu()[slots].double().repeat_interleave(group, dim=1)
        q = case.q.cpu()[b * n:(b + 1) * n].double()  # [N, Hq, D]
        seen = torch.cat([torch.ones(n, p, dtype=torch.bool), case.visibility[b]], dim=1)  # [N, P+N]
        if window >= 0:
            pos = draft_positions(case)[b * n:(b + 1) * n]
            key_pos = torch.cat([torch.arange(p), pos])
            seen &= key_pos.unsqueeze(0) >= (pos - window).unsqueeze(1)
        scores = torch.einsum("ihd,jhd->hij", q, keys) * softmax_scale
        if softcap > 0:
            scores = softcap * torch.tanh(scores / softcap)
        scores = scores.masked_fill(~seen, float("-inf"))
        row_lse = torch.logsumexp(scores, dim=-1)  # [Hq, N]
        probs = torch.exp(scores - row_lse.unsqueeze(-1))
        out[b * n:(b + 1) * n] = torch.einsum("hij,jhd->ihd", probs, values)
        lse[b * n:(b + 1) * n] = row_lse.transpose(0, 1)
    return out, lse


VERIFY_HEADS = [(4, 4), (8, 2), (32, 8), (4, 1), (16, 2)]


def random_verify_params(rng: random.Random, *, page_sizes=(1, 16, 64), head_dims=(64, 128),
                         max_context: int = 700) -> dict:
    """Random verify-batch parameters: batch 1-6, N 1-10 draft tokens (chains or trees), shared
    contexts or not, GQA/MQA/MHA."""
    hq, hkv = rng.choice(VERIFY_HEADS)
    batch = rng.choice([1, 2, 3, 4, 6])
    return dict(
        prefix=[rng.randint(1, max_context) for _ in range(batch)],
        num_draft=rng.choice([1, 2, 3, 4, 6, 8, 10]),
        page=rng.choice(page_sizes), hq=hq, hkv=hkv, d=rng.choice(head_dims),
        trees=rng.random() < 0.6, shared=rng.random() < 0.6,
    )
