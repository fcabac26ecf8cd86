"""Backend registration and the options every model backend shares (device, dtype).

A backend registers itself in its family's registry when its module is imported. Which modules hold
backends is declared as entry points of the group ``dnd.backends`` (dnd's own in ``pyproject.toml``),
so the core names none of them, and a third party adds a captioner, generator, embedder, summarizer
or probe renderer with a pip package of its own and no edit to dnd:

    [project.entry-points."dnd.backends"]
    my-captioner = "my_package.captioner"

Importing them all here, on demand, keeps ``import dnd`` fast while letting the pipeline and the
Serve deployments look any backend up by name.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import TYPE_CHECKING, Any, Iterator

from dnd.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: The entry-point group whose entries name modules that register backends.
ENTRY_POINT_GROUP = "dnd.backends"

_loaded = False


def load_backends() -> None:
    """Import every module of the ``dnd.backends`` entry points so that its backends register
    themselves. Safe to call repeatedly. A module that fails to import is named with its package."""
    global _loaded
    if _loaded:
        return
    from importlib.metadata import entry_points

    from dnd.workdir import ensure_working_directory

    ensure_working_directory()  # backend modules import model libraries, which resolve paths against it
    found = list(entry_points(group=ENTRY_POINT_GROUP))
    if not found:
        raise ConfigError(
            f"no dnd backends are registered (entry-point group {ENTRY_POINT_GROUP!r} is empty): dnd must be "
            "installed as a package (pip install -e . in a checkout) for its backends to be found"
        )
    for entry in sorted(found, key=lambda e: e.name):
        try:
            importlib.import_module(entry.value.split(":")[0])
        except ImportError as exc:
            package = entry.dist.name if entry.dist is not None else "an unknown package"
            raise ConfigError(
                f"backend module {entry.value!r} (entry point {entry.name!r} of {package}) cannot be imported: {exc}"
            ) from exc
    _loaded = True


_DTYPES = ("float32", "float16", "bfloat16")


def resolve_device(device: str) -> str:
    """``"auto"`` → ``"cuda"`` when a GPU is visible, else ``"cpu"``; explicit devices are checked."""
    import torch

    if not isinstance(device, str) or not device:
        raise ConfigError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(
            f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}"
        ) from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was requested but no CUDA GPU is visible; use 'auto' or 'cpu'")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ConfigError(
            f"device {device!r} does not exist; {torch.cuda.device_count()} CUDA device(s) are visible"
        )
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r} was requested but MPS is not available; use 'auto' or 'cpu'")
    if parsed.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}")
    return str(parsed)


def resolve_dtype(dtype: str, device: str) -> "torch.dtype":
    """The torch dtype named by ``dtype``; half precision is for accelerators only."""
    import torch

    if dtype not in _DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    if dtype != "float32" and device == "cpu":
        raise ConfigError(
            f"dtype {dtype!r} needs a GPU but the backend runs on the CPU; use dtype 'float32' there"
        )
    return getattr(torch, dtype)


def positive_int(name: str, value: Any) -> int:
    """``value`` as an int ≥ 1, or a ConfigError naming the option."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


def model_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(
            f"model must be a Hugging Face id, a local directory or 'random-tiny', got {value!r}"
        )
    return value


@contextlib.contextmanager
def seeded(device: str, seed: int) -> Iterator[None]:
    """Run with torch seeded to ``seed`` on ``device``, then restore the caller's RNG state."""
    import torch

    parsed = torch.device(device)
    forked = []
    if parsed.type == "cuda":
        forked = [parsed.index if parsed.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=forked):
        torch.manual_seed(seed)
        yield


def move_inputs(inputs: Any, device: str, dtype: "torch.dtype") -> dict:
    """A processor's output on ``device``; floating tensors (pixels) also cast to the model's dtype."""
    import torch

    moved = {}
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, dtype) if value.is_floating_point() else value.to(device)
        moved[key] = value
    return moved


def dtype_option(library: str, torch_dtype: "torch.dtype") -> dict:
    """The ``from_pretrained`` keyword that sets the weights' dtype in the installed ``library``.

    transformers 4.56 and diffusers 0.42 renamed ``torch_dtype`` to ``dtype`` and deprecate the old
    name; older releases know only ``torch_dtype`` and would silently ignore ``dtype``.
    """
    from importlib.metadata import version

    first_with_dtype = {"transformers": (4, 56), "diffusers": (0, 42)}[library]
    installed = tuple(int(part) for part in version(library).split(".")[:2] if part.isdigit())
    return {"dtype" if installed >= first_with_dtype else "torch_dtype": torch_dtype}
