"""The index maps of the decode kernel's narrow path over an FP8 pool (cuda/paged_decode.cu,
``attend_tile_narrow_fp8``), modelled lane by lane on CPU: a warp's 16-token step loads its K and
V bytes from the swizzled FP8 tiles as whole words, widens them in registers and feeds the
mma.m16n8k16 fragments directly (no widened 16-bit tile in shared memory).

What the kernel relies on, checked here for head dims 64, 128 and 256:
* the permuted head dims (a lane's dims of every 16-dim block are one word of its K row:
  ``narrow_k_dim`` here) and tokens (``narrow_token``: a lane's four tokens of P^T are four
  consecutive rows) give S^T = K Q^T and O^T = V^T P^T exactly, with O^T's rows at ``narrow_v_dim``;
* the byte permutes that turn four token rows into one word per head dim;
* every 128-bit K and V load is free of shared-memory bank conflicts (two-way for V at head dim
  64, whose 64-byte rows put two tokens of equal parity in one bank line).
The fragment layouts are PTX's (mma.m16n8k16 .f16/.bf16, movmatrix.m8n8.trans)."""

import pathlib

import numpy as np
import pytest

TILE_N = 64


# ---------------------------------------------------------------- the kernel's maps (mirrored)
def narrow_token(lam):
    """Physical row (in its 16-token step) of logical token lam of S^T / P^T."""
    return 4 * ((lam & 7) >> 1) + (lam & 1) + ((lam >> 3) << 1)


def fp8_k_chunk_offset(d, r, c):
    """Byte offset of 16-byte chunk c of K row r in an FP8 tile."""
    return r * d + 16 * (c ^ (4 * (r & 1)) if d // 16 >= 8 else c)


def fp8_v_chunk_offset(d, r, c):
    return r * d + 16 * (c ^ (2 * ((r >> 2) & 3)) if d >= 128 else c ^ ((r >> 2) & 3))


def narrow_k_dim(d, kk, t, e):
    """Physical head dim of logical dim 16 kk + (2t + e for e < 2, 2t + 8 + e - 2 otherwise)."""
    return 16 * (4 * (kk // 4) + t) + 4 * (kk % 4) + e


def narrow_v_dim(d, dn, g, h):
    """Physical head dim of O^T row 16 dn + g + 8 h (lane group g's D / 8 dims)."""
    if d == 64:
        return 8 * g + 2 * dn + h
    return 16 * (8 * (dn // 8) + g) + 2 * (dn % 8) + h


def swizzled_offset(d, row, col):  # mma.cuh SwizzledTile<D>::offset, in elements
    return row * d + (((col >> 3) ^ (row & 7)) * 8) + (col & 7)


def prmt(a, b, sel):
    """__byte_perm on words held as 4-tuples of byte slots."""
    pool = list(a) + list(b)
    return tuple(pool[(sel >> (4 * i)) & 0xF] for i in range(4))


def transpose4(w0, w1, w2, w3):
    lo01, hi01 = prmt(w0, w1, 0x5140), prmt(w0, w1, 0x7362)
    lo23, hi23 = prmt(w2, w3, 0x5140), prmt(w2, w3, 0x7362)
    return (prmt(lo01, lo23, 0x5410), prmt(lo01, lo23, 0x7632), prmt(hi01, hi23, 0x5410), prmt(hi01, hi23, 0x7632))


# ------------------------------------------------------------------------------ PTX layouts
def lanes():
    return [(lane, lane // 4, lane % 4) for lane in range(32)]


def mma(a_regs, b_regs):
    """D = A B from per-lane fragments: a_regs[lane] = four value pairs, b_regs[lane] = two."""
    a = np.zeros((16, 16))
    b = np.zeros((16, 8))
    for lane, g, t in lanes():
        for e in range(2):
            a[g, 2 * t + e] = a_regs[lane][0][e]
            a[g + 8, 2 * t + e] = a_regs[lane][1][e]
            a[g, 2 * t + 8 + e] = a_regs[lane][2][e]
            a[g + 8, 2 * t + 8 + e] = a_regs[lane][3][e]
            b[2 * t + e, g] = b_regs[lane][0][e]
            b[2 * t + 8 + e, g] = b_regs[lane][1][e]
    return a @ b


def c_frags(c):
    return {lane: (c[g, 2 * t], c[g, 2 * t + 1], c[g + 8, 2 * t], c[g + 8, 2 * t + 1]) for lane, g, t in lanes()}


def movmatrix_trans(pairs):
    """pairs[lane] = (M[g][2t], M[g][2t+1]) of an 8x8 M -> the same lanes' pairs of M^T."""
    m = np.zeros((8, 8))
    for lane, g, t in lanes():
        m[g, 2 * t], m[g, 2 * t + 1] = pairs[lane]
    return {lane: (m[2 * t, g], m[2 * t + 1, g]) for lane, g, t in lanes()}


def conflict_degree(accesses, width):
    """Largest number of distinct 4-byte words one bank serves in a phase of one load
    instruction (accesses[lane] = byte address; width in bytes)."""
    per_phase = {4: 32, 8: 16, 16: 8}[width]
    worst = 1
    for start in range(0, 32, per_phase):
        banks = {}
        for lane in range(start, start + per_phase):
            for word in range(accesses[lane] // 4, (accesses[lane] + width) // 4):
                banks.setdefault(word % 32, set()).add(word)
        worst = max(worst, max(len(words) for words in banks.values()))
    return worst


# ------------------------------------------------------------------------------------ model
def fp8_tile(values, offset):
    """A 64 x D tile of values stored as byte slots at the swizzled chunk offsets."""
    rows, d = values.shape
    smem = np.zeros(rows * d)
    for r in range(rows):
        for c in range(d // 16):
            smem[offset(d, r, c):offset(d, r, c) + 16] = values[r, 16 * c:16 * c + 16]
    return smem


def word(smem, addr):
    assert addr % 4 == 0
    return tuple(smem[addr:addr + 4])


@pytest.mark.parametrize("d", [64, 128, 256])
@pytest.mark.parametrize("step", [0, 3])
def test_the_narrow_fp8_step_computes_s_and_o_from_widened_words(d, step):
    rng = np.random.default_rng(d + step)
    k, v = rng.standard_normal((TILE_N, d)), rng.standard_normal((TILE_N, d))
    q = rng.standard_normal((16, d))  # 16 query rows in the tile, 8 used
    k_smem, v_smem = fp8_tile(k, fp8_k_chunk_offset), fp8_tile(v, fp8_v_chunk_offset)
    q_smem = np.zeros(16 * d)
    for r in range(16):
        for col in range(d):
            q_smem[swizzled_offset(d, r, col)] = q[r, col]
    r0 = step * 16

    # Q^T fragments: lane (g, t) reads 16 elements of query g at dims 16 (4k + t) .. as two uint4
    qf = {lane: [None] * (d // 16) for lane in range(32)}
    for lane, g, t in lanes():
        for kb in range(d // 64):
            for half in range(2):
                col = 16 * (4 * kb + t) + 8 * half
                base = swizzled_offset(d, g, col)
                assert base % 8 == 0
                w = [tuple(q_smem[base + 2 * i:base + 2 * i + 2]) for i in range(4)]
                kk = 4 * kb + 2 * half
                qf[lane][kk], qf[lane][kk + 1] = (w[0], w[1]), (w[2], w[3])

    # S^T: K rows r0 + narrow_token(g), (g + 8); one uint4 per row and 64 dims
    st = np.zeros((16, 8))
    k_addrs = {}
    for kb in range(d // 64):
        rows = {}
        for lane, g, t in lanes():
            for h, lam in enumerate((g, g + 8)):
                addr = fp8_k_chunk_offset(d, r0 + narrow_token(lam), 4 * kb + t)
                k_addrs.setdefault((kb, h), {})[lane] = addr
                rows[lane, h] = [word(k_smem, addr + 4 * w) for w in range(4)]
        for w in range(4):
            kk = 4 * kb + w
            a = {lane: (rows[lane, 0][w][:2], rows[lane, 1][w][:2], rows[lane, 0][w][2:], rows[lane, 1][w][2:])
                 for lane in range(32)}
            st += mma(a, {lane: qf[lane][kk] for lane in range(32)})
    perm_tokens = [r0 + narrow_token(lam) for lam in range(16)]
    np.testing.assert_allclose(st, k[perm_tokens] @ q[:8].T, rtol=1e-12, atol=1e-12)
    for addrs in k_addrs.values():
        assert conflict_degree(addrs, 16) == 1

    # P^T as the B operand (any values in S^T's accumulator layout), O^T = V^T P^T
    p = rng.standard_normal((16, 8))
    pc = c_frags(p)
    pb0 = movmatrix_trans({lane: pc[lane][:2] for lane in range(32)})
    pb1 = movmatrix_trans({lane: pc[lane][2:] for lane in range(32)})
    pb = {lane: (pb0[lane], pb1[lane]) for lane in range(32)}
    span = d // 8  # V bytes of a lane's dims in one token row
    per_load = min(span, 16)
    o_t = {}
    v_addrs = {}
    for kb in range(max(d // 128, 1)):
        quads = {}
        for lane, g, t in lanes():
            rows = []
            for i in range(4):
                r = r0 + 4 * t + i
                if d == 64:
                    addr = fp8_v_chunk_offset(d, r, g // 2) + 8 * (g % 2)
                else:
                    addr = fp8_v_chunk_offset(d, r, 8 * kb + g)
                v_addrs.setdefault((kb, i), {})[lane] = addr
                rows.append([word(v_smem, addr + 4 * w) for w in range(per_load // 4)])
            quads[lane] = [transpose4(*(rows[i][qw] for i in range(4))) for qw in range(per_load // 4)]
        for qw in range(per_load // 4):
            for pair in range(2):
                dn = 8 * kb + 2 * qw + pair
                a = {}
                for lane in range(32):
                    h0, h1 = quads[lane][qw][2 * pair], quads[lane][qw][2 * pair + 1]
                    a[lane] = (h0[:2], h1[:2], h0[2:], h1[2:])
                o_t[dn] = mma(a, pb)
    for addrs in v_addrs.values():
        assert conflict_degree(addrs, per_load) == (2 if d == 64 else 1)
    # O^T rows land at narrow_v_dim; P^T's logical token lam is row narrow_token(lam) of V
    want = v[perm_tokens].T @ p
    got = np.zeros((d, 8))
    for dn, block in o_t.items():
        for g in range(8):
            for h in range(2):
                got[narrow_v_dim(d, dn, g, h)] = block[g + 8 * h]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("d", [64, 128, 256])
def test_the_permutations_are_bijections(d):
    assert sorted(narrow_token(lam) for lam in range(16)) == list(range(16))
    k_dims = [narrow_k_dim(d, kk, t, e) for kk in range(d // 16) for t in range(4) for e in range(4)]
    assert sorted(k_dims) == list(range(d))
    v_dims = [narrow_v_dim(d, dn, g, h) for dn in range(d // 16) for g in range(8) for h in range(2)]
    assert sorted(v_dims) == list(range(d))
    # finish_narrow stores O^T row 16 dn + g + 8 at the head dim after row 16 dn + g's
    assert all(narrow_v_dim(d, dn, g, 1) == narrow_v_dim(d, dn, g, 0) + 1 for dn in range(d // 16) for g in range(8))
    for offset in (fp8_k_chunk_offset, fp8_v_chunk_offset):
        chunks = sorted(offset(d, r, c) for r in range(TILE_N) for c in range(d // 16))
        assert chunks == list(range(0, TILE_N * d, 16))


def test_the_model_mirrors_the_kernel_source():
    """The maps above are the kernel's expressions (a change there must change them here)."""
    source = (pathlib.Path(__file__).parents[1] / "cuda" / "paged_decode.cu").read_text()
    for expression in (
        "return 4 * ((l & 7) >> 1) + (l & 1) + ((l >> 3) << 1);",
        "return r * D + 16 * (D >= 128 ? c ^ (4 * (r & 1)) : c);",
        "return r * D + 16 * (D >= 128 ? c ^ (2 * ((r >> 2) & 3)) : c ^ ((r >> 2) & 3));",
        "return D == 64 ? 8 * g + 2 * dn + h : 16 * (8 * (dn / 8) + g) + 2 * (dn % 8) + h;",
        "Tile::offset(g, 16 * (4 * kb + t) + 8 * half)",
        "__byte_perm(w[0], w[1], 0x5140), hi01 = __byte_perm(w[0], w[1], 0x7362)",
        "out[0] = __byte_perm(lo01, lo23, 0x5410);",
        "out[1] = __byte_perm(lo01, lo23, 0x7632);",
        "fp8_v_chunk_offset<D>(r, g / 2) + 8 * (g % 2)",
        "fp8_v_chunk_offset<D>(r, 8 * kb + g)",
        "mma_16816<T>(st.o[8 * kb + 2 * qw + pair], a, pb0, pb1);",
        # the fragments' slots: K rows g / g + 8 and V head dims h 0 / 1 into (a0, a2) / (a1, a3)
        "const int k_row[2] = {r0 + narrow_token(g), r0 + narrow_token(g + 8)};",
        "fp8_k_chunk_offset<D>(k_row[0], 4 * kb + t)",
        "fp8_k_chunk_offset<D>(k_row[1], 4 * kb + t)",
        "widen_fp8x4<T, TKV>(w0[w], a[0], a[2]);",
        "widen_fp8x4<T, TKV>(w1[w], a[1], a[3]);",
        "widen_fp8x4<T, TKV>(by_dim[2 * pair], a[0], a[2]);",
        "widen_fp8x4<T, TKV>(by_dim[2 * pair + 1], a[1], a[3]);",
        "qf[kk][0] = w.x;", "qf[kk][1] = w.y;", "qf[kk + 1][0] = w.z;", "qf[kk + 1][1] = w.w;",
        "const int r = r0 + 4 * t + i;",
        # the mask tests a score's physical token; finish_narrow stores O^T's rows at their head dims
        "const int tok = tok0 + k_row[e / 2] - r0;",
        "const int d = kPermutedDims ? narrow_v_dim<D>(i, lane / 4, 0) : 16 * i + lane / 4;",
        "const int d8 = kPermutedDims ? d + 1 : d + 8;",
    ):
        assert expression in source, expression
