"""SGLang plugin: registers ``flashcore_sparse`` with SGLang, patching none of its files.

SGLang's ``load_plugins()`` calls ``register()`` in every process it starts, through the
entry point ``flashcore_sparse`` in group ``sglang.srt.plugins`` (see pyproject.toml);
``SGLANG_PLUGINS=flashcore_sparse`` keeps only this plugin.
"""

from __future__ import annotations

import importlib
import logging

logger = logging.getLogger(__name__)

BACKEND_NAME = "flashcore_sparse"
SUPPORTED_SGLANG = ">=0.5.17, <=0.5.23"

# add_attention_backend_choices moved from server_args (0.5.17) to arg_groups.choices (0.5.23)
_CHOICES_MODULES = ("sglang.srt.arg_groups.choices", "sglang.srt.server_args")


class SGLangVersionError(ImportError):
    pass


def _sglang_version() -> str:
    try:
        from importlib.metadata import version

        return version("sglang")
    except Exception:  # noqa: BLE001 - only used in a message
        return "unknown"


def _need(module: str, attr: str):
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise SGLangVersionError(
            f"flashcore_sparse needs {module}.{attr} from SGLang {SUPPORTED_SGLANG}; "
            f"the installed SGLang ({_sglang_version()}) does not have it: {exc}"
        ) from exc


def _choices_api():
    """(add_attention_backend_choices, ATTENTION_BACKEND_CHOICES) of the installed SGLang."""
    errors = []
    for module in _CHOICES_MODULES:
        try:
            mod = importlib.import_module(module)
            return mod.add_attention_backend_choices, mod.ATTENTION_BACKEND_CHOICES
        except (ImportError, AttributeError) as exc:
            errors.append(f"{module}: {exc}")
    raise SGLangVersionError(
        f"flashcore_sparse needs add_attention_backend_choices from SGLang {SUPPORTED_SGLANG}; "
        f"the installed SGLang ({_sglang_version()}) has none ({'; '.join(errors)})"
    )


def create_backend(model_runner):
    """The factory SGLang's registry calls; imports the backend only when it is used. A model whose
    attention our kernels cannot run on the GPU (``sglang_backend.flashinfer_route``) gets SGLang's
    own ``flashinfer`` backend, with a warning that says why."""
    from .sglang_backend import FlashCoreBackend, UnsupportedFeatureError, flashinfer_route

    reason = flashinfer_route(model_runner)
    if reason is None:
        return FlashCoreBackend(model_runner)
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS

    logger.warning("%s: %s; this model's attention runs on SGLang's flashinfer backend", BACKEND_NAME, reason)
    try:
        return ATTENTION_BACKENDS["flashinfer"](model_runner)
    except Exception as exc:  # noqa: BLE001 - say what was tried and why it failed
        raise UnsupportedFeatureError(reason, f"and SGLang's flashinfer backend could not be built ({exc})") from exc


def register() -> None:
    """Registers the backend factory and the CLI choice. Safe to call more than once."""
    registry = "sglang.srt.layers.attention.attention_registry"
    register_attention_backend = _need(registry, "register_attention_backend")
    backends = _need(registry, "ATTENTION_BACKENDS")
    if BACKEND_NAME not in backends:
        register_attention_backend(BACKEND_NAME)(create_backend)
    add_choices, choices = _choices_api()
    if BACKEND_NAME not in choices:
        add_choices([BACKEND_NAME])
    _register_deterministic()


def _register_deterministic() -> None:
    """Lists the backend for --enable-deterministic-inference (its decode is batch-invariant in
    that mode). It is not listed as radix-cache safe, so SGLang turns the radix cache off there."""
    for module in _CHOICES_MODULES:
        try:
            mod = importlib.import_module(module)
            add, choices = mod.add_deterministic_attention_backend_choices, mod.DETERMINISTIC_ATTENTION_BACKEND_CHOICES
        except (ImportError, AttributeError):
            continue
        if BACKEND_NAME not in choices:
            add([BACKEND_NAME])
        return  # (a release without the hook just cannot pick us for deterministic inference)
