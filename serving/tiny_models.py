"""Chronos models built from a config with random weights, saved as real checkpoints.

Tests and benchmarks cannot download ``amazon/chronos-*`` (no hub access here), so they
build models of the same architectures from a config, save them with ``save_pretrained``
and load them back through the ordinary ``BaseChronosPipeline.from_pretrained`` path,
from a local directory or from the lake's model registry. The weights are random: the
forecasts are meaningless, the compute cost and code paths are the real ones.

Sizes follow the published checkpoints where named so (``bolt-tiny`` ~9M parameters,
``bolt-small`` ~48M); ``chronos2-tiny`` (~0.5M) and ``t5-tiny`` are deliberately small.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

TinyKind = Literal["chronos2-tiny", "bolt-tiny", "bolt-mini", "bolt-small", "t5-tiny"]

#: The quantile levels the published Chronos-2 checkpoints predict.
CHRONOS2_QUANTILES = [0.01, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5]
CHRONOS2_QUANTILES = CHRONOS2_QUANTILES + [round(1 - q, 2) for q in reversed(CHRONOS2_QUANTILES[:-1])]
BOLT_QUANTILES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]

# T5 geometry of the published Bolt checkpoints (d_model, d_ff, layers, heads).
_BOLT_SIZES: dict[str, tuple[int, int, int, int]] = {
    "bolt-tiny": (256, 1024, 4, 4),
    "bolt-mini": (384, 1536, 4, 8),
    "bolt-small": (512, 2048, 6, 8),
}

#: Marker file written next to the checkpoint, so nobody mistakes it for a trained model.
TINY_MARKER = "tickcast-tiny-model.json"


def _chronos2(context_length: int, max_horizon: int, **overrides: Any) -> Any:
    from chronos.chronos2 import Chronos2Model
    from chronos.chronos2.config import Chronos2CoreConfig

    patch = 16
    chronos_config = {
        "context_length": context_length,
        "input_patch_size": patch,
        "input_patch_stride": patch,
        "output_patch_size": patch,
        "quantiles": CHRONOS2_QUANTILES,
        "use_reg_token": True,
        "use_arcsinh": True,
        "max_output_patches": max(1, -(-max_horizon // patch)),
        "time_encoding_scale": context_length,
    }
    config = Chronos2CoreConfig(
        d_model=overrides.pop("d_model", 64),
        d_kv=overrides.pop("d_kv", 16),
        d_ff=overrides.pop("d_ff", 256),
        num_layers=overrides.pop("num_layers", 2),
        num_heads=overrides.pop("num_heads", 4),
        dropout_rate=0.0,
        feed_forward_proj="relu",
        chronos_config=chronos_config,
        chronos_pipeline_class="Chronos2Pipeline",
        architectures=["Chronos2Model"],
        **overrides,
    )
    return Chronos2Model(config)


def _bolt(kind: str, context_length: int, max_horizon: int, **overrides: Any) -> Any:
    from chronos.chronos_bolt import ChronosBoltModelForForecasting
    from transformers import T5Config

    d_model, d_ff, layers, heads = _BOLT_SIZES[kind]
    fields: dict[str, Any] = dict(
        d_model=overrides.pop("d_model", d_model),
        d_ff=overrides.pop("d_ff", d_ff),
        d_kv=overrides.pop("d_kv", 64),
        num_layers=overrides.pop("num_layers", layers),
        num_decoder_layers=overrides.pop("num_decoder_layers", layers),
        num_heads=overrides.pop("num_heads", heads),
        dropout_rate=0.0,
        feed_forward_proj="relu",
        vocab_size=2,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
        chronos_config={
            "context_length": context_length,
            "prediction_length": max_horizon,
            "input_patch_size": 16,
            "input_patch_stride": 16,
            "quantiles": BOLT_QUANTILES,
            "use_reg_token": True,
        },
        chronos_pipeline_class="ChronosBoltPipeline",
        architectures=["ChronosBoltModelForForecasting"],
        **overrides,
    )
    return ChronosBoltModelForForecasting(T5Config(**fields))


def _t5(context_length: int, max_horizon: int, **overrides: Any) -> Any:
    from transformers import GenerationConfig, T5Config, T5ForConditionalGeneration

    n_tokens = overrides.pop("n_tokens", 512)
    fields: dict[str, Any] = dict(
        d_model=overrides.pop("d_model", 64),
        d_ff=overrides.pop("d_ff", 128),
        d_kv=overrides.pop("d_kv", 16),
        num_layers=overrides.pop("num_layers", 2),
        num_decoder_layers=overrides.pop("num_decoder_layers", 2),
        num_heads=overrides.pop("num_heads", 4),
        dropout_rate=0.0,
        vocab_size=n_tokens,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
        chronos_config={
            "tokenizer_class": "MeanScaleUniformBins",
            "tokenizer_kwargs": {"low_limit": -15.0, "high_limit": 15.0},
            "context_length": context_length,
            "prediction_length": max_horizon,
            "n_tokens": n_tokens,
            "n_special_tokens": 2,
            "pad_token_id": 0,
            "eos_token_id": 1,
            "use_eos_token": True,
            "model_type": "seq2seq",
            "num_samples": overrides.pop("num_samples", 8),
            "temperature": 1.0,
            "top_k": 50,
            "top_p": 1.0,
        },
        architectures=["T5ForConditionalGeneration"],
        **overrides,
    )
    model = T5ForConditionalGeneration(T5Config(**fields))
    model.generation_config = GenerationConfig(decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return model


def build_tiny_model(
    kind: TinyKind,
    path: str | Path,
    *,
    context_length: int | None = None,
    max_horizon: int | None = None,
    seed: int = 0,
    **overrides: Any,
) -> Path:
    """Build a Chronos model of ``kind`` with random weights and save it to ``path``.

    Args:
        kind: ``chronos2-tiny``, ``bolt-tiny``, ``bolt-mini``, ``bolt-small`` or ``t5-tiny``.
        path: directory to write (created); afterwards ``from_pretrained(path)`` loads it.
        context_length: the model's context limit (defaults: Chronos-2 8192, Bolt 2048, T5 512).
        max_horizon: the model's horizon limit (defaults: Chronos-2 1024, Bolt and T5 64).
        seed: seed of the random weights, so the same call gives the same checkpoint.
        overrides: config fields to change, e.g. ``d_model`` or ``num_layers``.

    Returns:
        The checkpoint directory.
    """
    import torch

    torch.manual_seed(seed)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    if kind == "chronos2-tiny":
        model = _chronos2(context_length or 8192, max_horizon or 1024, **overrides)
    elif kind in _BOLT_SIZES:
        model = _bolt(kind, context_length or 2048, max_horizon or 64, **overrides)
    elif kind == "t5-tiny":
        model = _t5(context_length or 512, max_horizon or 64, **overrides)
    else:
        raise ValueError(f"unknown tiny model kind {kind!r}; use one of chronos2-tiny, bolt-*, t5-tiny")
    model.eval()
    model.save_pretrained(out)
    params = sum(p.numel() for p in model.parameters())
    marker = {
        "kind": kind,
        "parameters": params,
        "seed": seed,
        "weights": "random (built from a config by serving.tiny_models; not trained)",
    }
    (out / TINY_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return out
