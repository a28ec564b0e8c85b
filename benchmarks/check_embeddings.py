"""Embedding models served by ``flashcore_sparse`` against SGLang's built-in backends: the same
token-id inputs through ``/encode`` on each server (``--is-embedding``, a model config from
``configs/`` with dummy weights), and per input the cosine similarity and the largest absolute
difference between ours and each other backend. BERT-style models run their layers as SGLang's
``ENCODER_ONLY`` attention (bidirectional over each input), which is what this checks.

    python3 benchmarks/check_embeddings.py --config tiny_bert_embedding --backends flashcore_sparse,triton \\
        --json out.json

Exits 1 when an input's cosine similarity to a built-in's embedding is below ``--min-cosine``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import urllib.request
from pathlib import Path
from typing import Dict, List, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_serving import Server, add_server_args  # noqa: E402


def inputs(seed: int, count: int, max_len: int, vocab: int = 4096) -> List[List[int]]:
    """Token-id inputs of lengths 1 .. max_len (the first is a single token), ids past the
    special ones."""
    rng = random.Random(seed)
    lengths = [1, max_len] + [rng.randint(2, max_len) for _ in range(max(0, count - 2))]
    return [[rng.randint(100, vocab - 1) for _ in range(n)] for n in lengths[:count]]


def encode(url: str, batch: Sequence[Sequence[int]]) -> List[List[float]]:
    body = json.dumps({"input_ids": [list(x) for x in batch]}).encode()
    req = urllib.request.Request(url + "/encode", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as resp:
        out = json.loads(resp.read())
    return [item["embedding"] for item in out]


def compare(ours: Sequence[Sequence[float]], theirs: Sequence[Sequence[float]]) -> Dict[str, float]:
    """The smallest cosine similarity and the largest absolute difference over the inputs."""
    if len(ours) != len(theirs):
        raise ValueError(f"{len(ours)} embeddings against {len(theirs)}")
    worst_cos, worst_abs = 1.0, 0.0
    for a, b in zip(ours, theirs):
        if len(a) != len(b):
            raise ValueError(f"embedding sizes differ: {len(a)} and {len(b)}")
        dot = sum(x * y for x, y in zip(a, b))
        na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(y * y for y in b))
        if math.isnan(dot) or math.isnan(na) or math.isnan(nb):
            cos = -1.0  # a NaN never passes
        else:
            cos = dot / (na * nb) if na > 0 and nb > 0 else float(na == nb)
        worst_cos = min(worst_cos, cos)
        worst_abs = max(worst_abs, max((abs(x - y) for x, y in zip(a, b)), default=0.0))
    return {"min_cosine": worst_cos, "max_abs_diff": worst_abs}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_server_args(p, config="tiny_bert_embedding", port=30021, mem_fraction=0.5, cuda_graph_max_bs=32,
                    max_running_requests=64)
    p.add_argument("--inputs", type=int, default=32)
    p.add_argument("--max-len", type=int, default=500)
    p.add_argument("--min-cosine", type=float, default=0.999)
    args = p.parse_args(argv)
    args.server_arg = ["--is-embedding"] + args.server_arg
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    backends = args.backends.split(",")
    batch = inputs(args.seed, args.inputs, args.max_len)
    embeddings = {}
    for backend in backends:
        with Server(backend, args, Path(args.log_dir)) as server:
            embeddings[backend] = encode(server.url, batch)
    rows, ok = [], True
    for other in backends[1:]:
        row = {"ours": backends[0], "other": other, **compare(embeddings[backends[0]], embeddings[other])}
        ok &= row["min_cosine"] >= args.min_cosine
        rows.append(row)
        print(f"{backends[0]} vs {other}: min cosine {row['min_cosine']:.6f}, max abs diff {row['max_abs_diff']:.3e}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "inputs": len(batch), "rows": rows}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
