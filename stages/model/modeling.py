"""Which model the train stage trains: a T5 preset built from scratch, or a pretrained checkpoint.

`model.init: scratch` builds `T5ForConditionalGeneration` from `model.preset` with the learned
tokenizer (data/tokenizer). Any other `model.init` is a local folder or a hub id of a pretrained
seq2seq checkpoint, loaded with its own tokenizer. Nothing is downloaded when the hub is offline:
a hub id that is not in the local cache stops the stage at once with a message saying how to
point `model.init` at a local folder instead.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.core.errors import StageError

# Shapes of the T5 v1.1 / FLAN-T5 family (gated-GELU feed-forward, unscaled decoder output). Note:
# transformers 5 always ties T5's lm_head to the input embedding; `tie_word_embeddings: False` (as in
# FLAN-T5's config) now only means "do not scale the decoder output by d_model ** -0.5".
# t5-small and t5-base match google/flan-t5-small and google/flan-t5-base; tiny is a CPU-sized
# member of the same family for the sample and the tests.
_T5_COMMON: dict[str, Any] = dict(
    feed_forward_proj="gated-gelu", tie_word_embeddings=False, relative_attention_num_buckets=32,
    relative_attention_max_distance=128, dropout_rate=0.1, layer_norm_epsilon=1e-6, initializer_factor=1.0,
    pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(d_model=64, d_ff=256, d_kv=16, num_heads=4, num_layers=2, num_decoder_layers=2),
    "t5-small": dict(d_model=512, d_ff=1024, d_kv=64, num_heads=6, num_layers=8, num_decoder_layers=8),
    "t5-base": dict(d_model=768, d_ff=2048, d_kv=64, num_heads=12, num_layers=12, num_decoder_layers=12),
}
SCRATCH = "scratch"


@dataclass
class Device:
    """Where training runs and in which precision."""
    kind: str            # cuda | cpu
    name: str            # e.g. "NVIDIA H100 80GB HBM3" or "cpu (2 threads)"
    bf16: bool           # CUDA with bf16 support: bf16 autocast (T5 overflows in fp16, so never fp16)

    @property
    def precision(self) -> str:
        return "bf16" if self.bf16 else "float32"


def detect_device() -> Device:
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        if not torch.cuda.is_bf16_supported():
            # fp16 is not an option for T5 (activations overflow); fall back to full precision.
            return Device("cuda", name, bf16=False)
        return Device("cuda", name, bf16=True)
    return Device("cpu", f"cpu ({torch.get_num_threads()} threads)", bf16=False)


def t5_config(preset: str, vocab_size: int) -> Any:
    from transformers import T5Config

    if preset not in PRESETS:
        raise StageError(f"model.preset {preset!r} is unknown; choose one of {', '.join(PRESETS)}")
    return T5Config(vocab_size=vocab_size, **_T5_COMMON, **PRESETS[preset])


def build_scratch_model(preset: str, tokenizer: Any, seed: int) -> Any:
    """A randomly initialised T5 of the preset's shape, its vocabulary sized to the tokenizer."""
    import torch
    from transformers import T5ForConditionalGeneration

    torch.manual_seed(seed)   # the initial weights are part of the run: same seed, same model
    model = T5ForConditionalGeneration(t5_config(preset, len(tokenizer)))
    # T5 v1.1 initialises the (shared) embedding with std 1 and does not scale the decoder output,
    # so the first logits have std ~sqrt(d_model) and the loss starts near 80 (measured). With std
    # d_model ** -0.5 the first loss is ~ln(vocab) and AdamW trains from step one.
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, model.config.d_model ** -0.5)
    return model


def _offline() -> bool:
    from huggingface_hub.constants import is_offline_mode

    return bool(is_offline_mode())


def _not_available(init: str, why: str) -> StageError:
    local = f"models/{init.rstrip('/').split('/')[-1]}"
    return StageError(
        f"model.init {init!r} is neither a local folder nor in the Hugging Face cache ({why}). "
        f"On a machine with internet, save it to a folder, e.g. "
        f"`huggingface-cli download {init} --local-dir {local}` (or model.save_pretrained + "
        f"tokenizer.save_pretrained), copy that folder here and run "
        f"`dvc exp run -S model.init={local}`; or use `model.init: scratch`.")


def resolve_pretrained(init: str) -> str:
    """The folder or cached hub id to load `init` from; fails fast (no download attempt) when offline."""
    path = Path(init).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise StageError(f"model.init {init!r} is a folder without config.json: not a saved "
                             "transformers checkpoint (save one with model.save_pretrained(folder))")
        return str(path)
    if init.startswith((".", "/", "~")) or init.count("/") > 1 or os.sep != "/" and os.sep in init:
        raise StageError(f"model.init {init!r}: no such folder")
    from transformers import AutoConfig

    try:   # the local cache first: works offline, never touches the network
        AutoConfig.from_pretrained(init, local_files_only=True)
        return init
    except (OSError, ValueError):
        pass
    if _offline():
        raise _not_available(init, "the hub is offline: HF_HUB_OFFLINE=1")
    try:
        AutoConfig.from_pretrained(init)
    except (OSError, ValueError) as exc:
        raise _not_available(init, f"download failed: {str(exc).splitlines()[0][:160]}") from None
    return init


def load_pretrained(init: str) -> tuple[Any, Any]:
    """Model (float32 weights; bf16 is applied by autocast during training) and its own tokenizer."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    source = resolve_pretrained(init)
    local_only = _offline() or Path(source).exists()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        model = AutoModelForSeq2SeqLM.from_pretrained(source, dtype=torch.float32, local_files_only=local_only)
    except (OSError, ValueError) as exc:
        raise StageError(f"model.init {init!r} could not be loaded: {str(exc).splitlines()[0][:300]}") from None
    if not model.config.is_encoder_decoder:
        raise StageError(f"model.init {init!r} is a {model.config.model_type} model, not an encoder-decoder")
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    return model, tokenizer


def load_model(model_params: dict[str, Any], tokenizer_dir: Path, seed: int) -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, description) for the `model:` params section."""
    from transformers import AutoTokenizer

    init = str(model_params.get("init", SCRATCH))
    if init == SCRATCH:
        if not (tokenizer_dir / "tokenizer.json").is_file():
            raise StageError(f"{tokenizer_dir} holds no tokenizer; run the tokenizer stage first (dvc repro tokenizer)")
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        preset = str(model_params.get("preset", "tiny"))
        model = build_scratch_model(preset, tokenizer, seed)
        desc = {"init": SCRATCH, "preset": preset, "tokenizer": str(tokenizer_dir)}
    else:
        model, tokenizer = load_pretrained(init)
        desc = {"init": init, "preset": None, "tokenizer": init}
    desc["parameters"] = sum(p.numel() for p in model.parameters())
    desc["vocab_size"] = len(tokenizer)
    return model, tokenizer, desc
