"""Where published weights are found by name: ``hf-hub:ORG/NAME`` (timm on the Hugging Face hub) and
``keras.applications:NAME`` (Keras' own weight cache), read by ``train --init`` and ``convert-weights``."""

from __future__ import annotations

import os
from pathlib import Path

from effspec.support.errors import UsageError

HF_PREFIX = "hf-hub:"
KERAS_APPLICATIONS_PREFIX = "keras.applications:"


class InitError(UsageError):
    """--init cannot be honoured (the trainers report it as a TrainingError: one line, exit 2)."""


def resolve_name(text: str) -> tuple[Path, str | None]:
    """--init's value as a local file and the format a name implies (None: a path, format unknown)."""
    if text.startswith(HF_PREFIX):
        return hf_hub_file(text[len(HF_PREFIX) :]), "timm"
    if text.startswith(KERAS_APPLICATIONS_PREFIX):
        return keras_applications_file(text[len(KERAS_APPLICATIONS_PREFIX) :]), "keras-applications"
    return Path(text), None


#: The files a timm repository on the Hugging Face hub holds its weights in, preferred first.
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def hf_hub_file(repo: str) -> Path:
    """A timm checkpoint on the Hugging Face hub (``timm/tf_efficientnet_b0.ns_jft_in1k``) through
    huggingface_hub's download and cache (HF_HOME / HF_HUB_CACHE; HF_HUB_OFFLINE=1: the cache only). The
    repository's config.json comes along when it can (the timm importer reads the model from it)."""
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise InitError(f"{HF_PREFIX}{repo}: expected {HF_PREFIX}ORGANIZATION/NAME, e.g. timm/tf_efficientnet_b0")
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:
        raise InitError(f"{HF_PREFIX}{repo}: huggingface_hub is not installed (pip install huggingface_hub)") from None
    found = None
    for filename in HF_WEIGHT_FILES:
        try:
            found = Path(hf_hub_download(repo, filename))
            break
        except (EntryNotFoundError, LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError):
            continue
    if found is None:
        cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
            os.environ.get("HF_HOME", os.path.join("~", ".cache", "huggingface")), "hub"
        )
        raise InitError(
            f"{HF_PREFIX}{repo}: not in the Hugging Face cache ({cache}) and not downloadable here: fetch it with "
            f"`huggingface-cli download {repo} {HF_WEIGHT_FILES[0]} config.json` on a machine with network"
        )
    try:
        hf_hub_download(repo, "config.json")
    except Exception:  # noqa: BLE001 - optional: the path names the model too
        pass
    return found


def keras_applications_file(name: str) -> Path:
    """A keras.applications EfficientNet's ImageNet weights by class name, through Keras' own weight
    cache (``keras.utils.get_file``: ``$KERAS_HOME/models`` or ``~/.keras/models``), the file names
    keras.applications itself uses; the no-top file first (fine-tuning replaces the classifier)."""
    from effspec.weights.sources.keras_applications import APPLICATIONS

    if name not in APPLICATIONS:
        raise InitError(f"{KERAS_APPLICATIONS_PREFIX}{name}: unknown application. Known: {', '.join(APPLICATIONS)}")
    import keras
    from keras.src.applications import efficientnet, efficientnet_v2

    v2 = name.startswith("EfficientNetV2")
    stem = "efficientnetv2-" + name[len("EfficientNetV2") :].lower() if v2 else name.lower()
    base = (efficientnet_v2 if v2 else efficientnet).BASE_WEIGHTS_PATH
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    names = (f"{stem}_notop.h5", f"{stem}.h5")
    for file_name in names:
        if (Path(home) / "models" / file_name).is_file():
            break
    else:
        file_name = names[0]
    try:
        return Path(keras.utils.get_file(file_name, base + file_name, cache_subdir="models"))
    except Exception as exc:  # noqa: BLE001 - any download failure: no network here
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise InitError(
            f"{KERAS_APPLICATIONS_PREFIX}{name}: not in Keras' weight cache ({home}/models/{names[0]} or "
            f"{names[1]}) and not downloadable ({first}): fetch {base}{names[0]} there"
        ) from None
