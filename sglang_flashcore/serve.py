"""``python -m sglang_flashcore.serve``: SGLang's server with ``--attention-backend flashcore_sparse``.

With no ``--model-path`` it serves the tiny Llama config shipped in ``configs/tiny_llama`` with
dummy weights (``--load-format dummy``) and no tokenizer (``--skip-tokenizer-init``: send token
ids), so nothing is downloaded; ``--shipped-config NAME`` picks another config of ``configs/``. Every
other argument goes to ``sglang.launch_server`` unchanged (SGLang's own ``--config`` YAML file too);
attention-backend flags may only name ``flashcore_sparse``. ``--dry-run`` prints the command instead
of running it.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import List, Optional, Sequence, Tuple

from .locations import data_dir

BACKEND = "flashcore_sparse"
DEFAULT_MODEL = "tiny_llama"


def config_dir(name: str = DEFAULT_MODEL) -> str:
    """Path of a model config shipped in ``configs/``."""
    root = data_dir("configs", "README.md")
    if not (root / name / "config.json").is_file():
        raise FileNotFoundError(f"no shipped model config named {name!r} (looked in {root})")
    return str(root / name)


def _has(args: Sequence[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


# SGLang's flags that pick an attention backend: all of them must name ours (or be left out)
BACKEND_FLAGS = ("--attention-backend", "--decode-attention-backend", "--prefill-attention-backend")


def _flag_values(args: Sequence[str], flag: str) -> List[Optional[str]]:
    """Every value given to ``flag`` (``--flag v`` or ``--flag=v``; None when it has no value)."""
    values = []
    for i, a in enumerate(args):
        if a == flag:
            values.append(args[i + 1] if i + 1 < len(args) else None)
        elif a.startswith(flag + "="):
            values.append(a.split("=", 1)[1])
    return values


def _without_flag(args: Sequence[str], flag: str) -> List[str]:
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == flag:
            skip = True
        elif not a.startswith(flag + "="):
            out.append(a)
    return out


def build_command(argv: Sequence[str]) -> Tuple[List[str], bool]:
    """The ``sglang.launch_server`` command line for our arguments, and whether it is a dry run.
    A bad argument is a usage error (``SystemExit(2)`` with one line), before anything starts."""
    parser = argparse.ArgumentParser(prog="python -m sglang_flashcore.serve", add_help=True,
                                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", default=None,
                        help=f"model folder or hub id (default: the shipped {DEFAULT_MODEL} config, dummy weights)")
    # not --config: SGLang's own --config (a YAML file of server arguments) passes through unchanged
    parser.add_argument("--shipped-config", default=None,
                        help="a model config shipped in configs/ (e.g. llama3_8b), served with dummy weights")
    parser.add_argument("--dry-run", action="store_true", help="print the command and exit")
    ours, rest = parser.parse_known_args(list(argv))
    for flag in BACKEND_FLAGS:
        values = _flag_values(rest, flag)
        wrong = [v for v in values if v != BACKEND]
        if wrong:
            parser.error(f"{flag}: this wrapper always serves {BACKEND}; got {wrong[0]!r}. "
                         f"Run `python -m sglang.launch_server` directly for other backends.")
        if flag == "--attention-backend":
            rest = _without_flag(rest, flag)
    if ours.model_path is not None and not ours.model_path.strip():
        parser.error("--model-path: expected a model folder or hub id, got an empty value")
    if ours.model_path and ours.shipped_config:
        parser.error("--model-path and --shipped-config: give one of them")
    shipped = ours.model_path is None
    try:
        model = ours.model_path or config_dir(ours.shipped_config or DEFAULT_MODEL)
    except FileNotFoundError as exc:
        parser.error(f"--shipped-config: {exc}")
    cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", model, "--attention-backend", BACKEND]
    if shipped:  # an architecture-only config: random weights, token-id requests
        if not _has(rest, "--load-format"):
            cmd += ["--load-format", "dummy"]
        if not _has(rest, "--skip-tokenizer-init") and not _has(rest, "--tokenizer-path"):
            cmd += ["--skip-tokenizer-init"]
    cmd += rest
    return cmd, ours.dry_run


def main(argv: Optional[Sequence[str]] = None) -> int:
    cmd, dry_run = build_command(sys.argv[1:] if argv is None else argv)
    if dry_run:
        print(shlex.join(cmd))
        return 0
    import torch

    if not torch.cuda.is_available():
        print("sglang_flashcore.serve: SGLang's server needs a CUDA GPU (its CPU engine needs a CPU "
              "build of sgl-kernel that is not published). Run it on a Hopper machine; --dry-run "
              "prints the command.", file=sys.stderr)
        return 2
    env = dict(os.environ)
    # SGLang's workers load plugins from the entry point; keep ours in the allow-list if one is set.
    if env.get("SGLANG_PLUGINS") and BACKEND not in env["SGLANG_PLUGINS"].split(","):
        env["SGLANG_PLUGINS"] += "," + BACKEND
    os.execve(cmd[0], cmd, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
