"""Train Chronos-2 models: from scratch (the bundled checkpoint) or fine-tuning (full or LoRA).

The recipe is Chronos' own :meth:`Chronos2Pipeline.fit`: the same :class:`Chronos2Dataset`
(random windows of the inputs), the same :class:`Chronos2Trainer` (a Hugging Face
``Trainer``), the same quantile loss, and the same post-processing of the config.
``fit()`` itself gives no way to checkpoint every K steps and resume, so :func:`train_model`
runs that recipe with checkpointing turned on and ``resume_from_checkpoint``: a killed run
started again with the same work directory continues from its last checkpoint (model,
optimizer, scheduler, step and RNG state) instead of starting over. A finished run keeps
``final/`` in the work directory, and starting it again returns that instead of training.

LoRA fine-tuning uses ``peft`` exactly as ``fit()`` does; the adapter is merged into the
base weights before saving, so a registered model is a plain Chronos-2 directory that loads
anywhere without the base model or ``peft``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from chronos import Chronos2Pipeline

log = logging.getLogger(__name__)

#: The quantile levels of Amazon's Chronos-2 checkpoints; tickcast's models use the same.
CHRONOS2_QUANTILES: tuple[float, ...] = (
    0.01,
    0.05,
    0.1,
    0.15,
    0.2,
    0.25,
    0.3,
    0.35,
    0.4,
    0.45,
    0.5,
    0.55,
    0.6,
    0.65,
    0.7,
    0.75,
    0.8,
    0.85,
    0.9,
    0.95,
    0.99,
)


@dataclass(frozen=True)
class ModelPreset:
    """Architecture of a Chronos-2 model built from scratch (fields of Chronos2CoreConfig and
    Chronos2ForecastingConfig)."""

    d_model: int
    d_kv: int
    d_ff: int
    num_layers: int
    num_heads: int
    context_length: int
    patch_size: int = 16
    max_output_patches: int = 4
    quantiles: tuple[float, ...] = CHRONOS2_QUANTILES
    use_arcsinh: bool = True
    use_reg_token: bool = True
    dropout_rate: float = 0.05


#: ``tiny`` is for tests (tens of thousands of parameters, trains in seconds); ``small`` is the
#: bundled checkpoint (about 1M parameters, a few MB).
PRESETS: dict[str, ModelPreset] = {
    "tiny": ModelPreset(d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2, context_length=256),
    "small": ModelPreset(d_model=128, d_kv=32, d_ff=256, num_layers=4, num_heads=4, context_length=256),
}


def build_model(preset: str | ModelPreset = "small", seed: int = 0) -> Chronos2Pipeline:
    """A Chronos-2 pipeline with freshly initialized weights (deterministic for a seed)."""
    import torch
    from chronos import Chronos2Pipeline
    from chronos.chronos2 import Chronos2Model
    from chronos.chronos2.config import Chronos2CoreConfig

    spec = PRESETS[preset] if isinstance(preset, str) else preset
    config = Chronos2CoreConfig(
        d_model=spec.d_model,
        d_kv=spec.d_kv,
        d_ff=spec.d_ff,
        num_layers=spec.num_layers,
        num_heads=spec.num_heads,
        dropout_rate=spec.dropout_rate,
        feed_forward_proj="relu",
        attn_implementation="sdpa",
        architectures=["Chronos2Model"],
        chronos_pipeline_class="Chronos2Pipeline",
        chronos_config={
            "context_length": spec.context_length,
            "input_patch_size": spec.patch_size,
            "input_patch_stride": spec.patch_size,
            "output_patch_size": spec.patch_size,
            "quantiles": list(spec.quantiles),
            "use_reg_token": spec.use_reg_token,
            "use_arcsinh": spec.use_arcsinh,
            "max_output_patches": spec.max_output_patches,
            "time_encoding_scale": spec.context_length,
        },
    )
    torch.manual_seed(seed)
    model = Chronos2Model(config)
    return Chronos2Pipeline(model=model)


def count_parameters(pipeline: Chronos2Pipeline) -> int:
    """Number of parameters of the pipeline's model."""
    return int(sum(p.numel() for p in pipeline.model.parameters()))


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run.

    Args:
        num_steps: optimizer steps in total (a resumed run counts the steps already done).
        batch_size: series per step.
        learning_rate: peak learning rate (linear warm-up, then linear decay to zero).
        prediction_length: horizon the model is trained for.
        context_length: longest context during training; None uses the model's.
        min_past: shortest context a training window may have.
        finetune_mode: ``full`` trains every weight; ``lora`` trains low-rank adapters (peft).
        lora: LoRA options (peft ``LoraConfig`` keyword arguments) for ``finetune_mode="lora"``.
        save_steps: checkpoint every this many steps (0 disables checkpoints).
        logging_steps: log the loss every this many steps.
        warmup_ratio: fraction of steps spent warming the learning rate up.
        weight_decay: AdamW weight decay.
        max_grad_norm: gradient clipping.
        seed: seeds weights (from scratch), data order and dropout.
        torch_threads: torch intra-op threads (0 leaves torch's default).
        progress: show a progress bar.
    """

    num_steps: int = 1000
    batch_size: int = 64
    learning_rate: float = 1e-3
    prediction_length: int = 16
    context_length: int | None = None
    min_past: int = 32
    finetune_mode: Literal["full", "lora"] = "full"
    lora: dict[str, Any] | None = None
    save_steps: int = 100
    logging_steps: int = 25
    warmup_ratio: float = 0.05
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 0
    torch_threads: int = 0
    progress: bool = True


@dataclass
class TrainResult:
    """What a training run produced."""

    pipeline: Chronos2Pipeline
    path: Path
    steps: int
    resumed_from: int | None
    wall_s: float
    steps_per_s: float
    final_loss: float | None
    losses: list[tuple[int, float]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-friendly summary (no model)."""
        return {
            "path": str(self.path),
            "steps": self.steps,
            "resumed_from": self.resumed_from,
            "wall_s": round(self.wall_s, 2),
            "steps_per_s": round(self.steps_per_s, 3),
            "final_loss": self.final_loss,
            "config": self.config,
        }


DEFAULT_LORA: dict[str, Any] = {
    "r": 8,
    "lora_alpha": 16,
    "target_modules": [
        "self_attention.q",
        "self_attention.v",
        "self_attention.k",
        "self_attention.o",
        "output_patch_embedding.output_layer",
    ],
}


def last_checkpoint(work_dir: Path) -> Path | None:
    """The newest ``checkpoint-N`` folder in ``work_dir`` that was completely written."""
    if not work_dir.is_dir():
        return None
    done = [p for p in work_dir.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    if not done:
        return None
    return max(done, key=lambda p: int(p.name.split("-")[-1]))


def _losses(work_dir: Path, history: list[dict[str, Any]]) -> list[tuple[int, float]]:
    return [(int(h["step"]), float(h["loss"])) for h in history if "loss" in h and "step" in h]


def train_model(
    pipeline: Chronos2Pipeline,
    inputs: Sequence[Any],
    config: TrainConfig,
    work_dir: str | Path,
    resume: bool = True,
) -> TrainResult:
    """Train ``pipeline`` on ``inputs`` with Chronos-2's recipe, checkpointing to ``work_dir``.

    Args:
        pipeline: the starting model (from :func:`build_model` or a pretrained one); it is
            not modified: a copy is trained, as ``fit()`` does.
        inputs: what ``Chronos2Pipeline.fit`` accepts: 1-d arrays, or prepared inputs (a lazy
            sequence such as :class:`training.synthetic.SyntheticSeries`).
        config: hyper-parameters.
        work_dir: where checkpoints and the final model go (``work_dir/final``).
        resume: continue from the newest checkpoint in ``work_dir`` when there is one; False
            wipes ``work_dir`` first.

    Returns:
        The trained pipeline and statistics. The model is saved in ``work_dir/final``.
    """
    import torch
    from chronos import Chronos2Pipeline
    from chronos.chronos2 import Chronos2Model
    from chronos.chronos2.dataset import Chronos2Dataset, DatasetMode
    from chronos.chronos2.trainer import Chronos2Trainer
    from transformers.trainer_callback import PrinterCallback, ProgressCallback, TrainerCallback
    from transformers.training_args import TrainingArguments

    work = Path(work_dir)
    final_dir = work / "final"
    if not resume and work.exists():
        shutil.rmtree(work)
    wanted = json.loads(json.dumps(asdict(config), default=str))
    run_file = work / "run.json"
    if run_file.is_file():
        started_with = json.loads(run_file.read_text()).get("config")
        if started_with != wanted:
            from tickcast.errors import ModelError

            raise ModelError(
                f"{work} holds checkpoints of a run with other settings",
                "start over with --no-resume (resume=False) or use another work directory",
            )
    if resume and (final_dir / "config.json").is_file() and (work / "train_result.json").is_file():
        done = json.loads((work / "train_result.json").read_text())
        if done.get("config") == wanted:
            log.info("training already finished in %s; loading %s", work, final_dir)
            loaded = Chronos2Pipeline.from_pretrained(str(final_dir))
            return TrainResult(
                pipeline=loaded,
                path=final_dir,
                steps=int(done["steps"]),
                resumed_from=done.get("resumed_from"),
                wall_s=float(done["wall_s"]),
                steps_per_s=float(done["steps_per_s"]),
                final_loss=done.get("final_loss"),
                losses=[tuple(x) for x in done.get("losses", [])],  # type: ignore[misc]
                config=done.get("config", {}),
            )
    work.mkdir(parents=True, exist_ok=True)
    run_file.write_text(json.dumps({"config": wanted}, indent=2))
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)

    # A copy, so the caller's pipeline is untouched (as in fit()).
    model_config = pipeline.model.config.__class__.from_dict(pipeline.model.config.to_dict())
    model: Any = Chronos2Model(model_config).to(pipeline.model.device)
    model.load_state_dict(pipeline.model.state_dict())
    if config.finetune_mode == "lora":
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            from tickcast.errors import ModelError

            raise ModelError("LoRA fine-tuning needs peft", "pip install peft, or use --mode full") from None
        model = get_peft_model(model, LoraConfig(**(config.lora or DEFAULT_LORA)))
        trainable, total = model.get_nb_trainable_parameters()
        log.info("LoRA: %d trainable of %d parameters", trainable, total)

    context_length = config.context_length or pipeline.model_context_length
    dataset = Chronos2Dataset(
        inputs=inputs,
        context_length=context_length,
        prediction_length=config.prediction_length,
        batch_size=config.batch_size,
        output_patch_size=pipeline.model_output_patch_size,
        min_past=config.min_past,
        mode=DatasetMode.TRAIN,
    )
    use_cpu = str(pipeline.model.device) == "cpu"
    args = TrainingArguments(
        output_dir=str(work),
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=math.ceil(config.warmup_ratio * config.num_steps),
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        optim="adamw_torch",
        logging_strategy="steps",
        logging_steps=config.logging_steps,
        disable_tqdm=not config.progress,
        report_to="none",
        max_steps=config.num_steps,
        dataloader_num_workers=0,
        save_strategy="steps" if config.save_steps > 0 else "no",
        save_steps=max(config.save_steps, 1),
        save_total_limit=2,
        save_only_model=False,  # optimizer and scheduler too, so a resumed run continues exactly
        ignore_data_skip=True,  # training windows are random draws: no need to replay skipped batches
        eval_strategy="no",
        prediction_loss_only=True,
        use_cpu=use_cpu,
        seed=config.seed,
        data_seed=config.seed,
    )
    if not use_cpu:
        args._n_gpu = 1  # as fit(): no DataParallel

    class _LogLoss(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                log.info("step %d/%d loss %.4f", state.global_step, state.max_steps, logs["loss"])

    trainer = Chronos2Trainer(model=model, args=args, train_dataset=dataset, callbacks=[_LogLoss()])
    trainer.pop_callback(PrinterCallback)
    if not config.progress:
        trainer.pop_callback(ProgressCallback)

    checkpoint = last_checkpoint(work) if resume else None
    resumed_from = int(checkpoint.name.split("-")[-1]) if checkpoint else None
    if checkpoint:
        log.info("resuming from %s", checkpoint)
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    wall = time.perf_counter() - started
    steps_run = trainer.state.global_step - (resumed_from or 0)

    if config.finetune_mode == "lora":
        model = model.merge_and_unload()
    model.chronos_config.context_length = max(model.chronos_config.context_length, context_length)
    model.chronos_config.max_output_patches = max(
        model.chronos_config.max_output_patches,
        math.ceil(config.prediction_length / pipeline.model_output_patch_size),
    )
    model.config.chronos_config = model.chronos_config.__dict__
    trained = Chronos2Pipeline(model=model)
    trained.model.eval()
    if final_dir.exists():
        shutil.rmtree(final_dir)
    trained.save_pretrained(final_dir)

    losses = _losses(work, trainer.state.log_history)
    result = TrainResult(
        pipeline=trained,
        path=final_dir,
        steps=int(trainer.state.global_step),
        resumed_from=resumed_from,
        wall_s=wall,
        steps_per_s=steps_run / wall if wall > 0 else 0.0,
        final_loss=losses[-1][1] if losses else None,
        losses=losses,
        config=asdict(config),
    )
    (work / "train_result.json").write_text(json.dumps({**result.summary(), "losses": losses}, indent=2))
    return result
