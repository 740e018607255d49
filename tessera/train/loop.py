"""The generic training loop shared by every Tessera trainer. It never imports a specific model.

A recipe hands `fit` a `Task`: a training module whose `forward(batch, step)` returns a `StepOutput` (the loss and
scalar metrics), a pure function that returns the batch for a given (step, micro-batch, rank, world size), and
optional evaluation and export hooks. `fit` owns everything else: device placement, DDP under torchrun, autocast,
AdamW with warmup + cosine, gradient accumulation and clipping, progress bar, CSV/TensorBoard logs, periodic
evaluation, atomic checkpoints and exact resume.

Exact resume. Batches are a function of the step (no iterator state), and a checkpoint holds the module, optimiser,
scheduler and every rank's RNG states, so a run killed after checkpoint k and resumed continues with the same
batches, the same random draws and the same arithmetic as the uninterrupted run: on CPU the final weights are
bitwise equal (tested).

Loss normalisation. By default each micro-batch loss is a mean and micro-batches are averaged. A task that defines
`batch_weight(batch)` (e.g. the number of target tokens) instead returns a SUM, and the loop divides by the total
weight of the whole global batch (all micro-batches, all ranks), so gradient accumulation and data parallelism give
the same gradient as one big batch.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from tessera.config import ConfigError, dump_config, to_dict
from tessera.train.checkpoint import check_model_fits, load_latest, save_checkpoint
from tessera.train.guard import GoodputMeter, ReplayMismatchError, Snapshot, checksums_match, grad_checksum
from tessera.train.log import RunLogger
from tessera.train.optim import OptimConfig, build_optimizer, default_param_groups, warmup_cosine
from tessera.train.runtime import Runtime, all_reduce_mean, autocast, init_runtime

__all__ = ["TrainConfig", "StepOutput", "Task", "FitResult", "fit", "move_to_device"]

_log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Loop settings shared by all trainers."""

    steps: int = 1000  # optimiser steps
    grad_accum: int = 1  # micro-batches per optimiser step
    log_every: int = 10  # steps between log rows
    eval_every: int = 0  # steps between evaluations (0: only at the end)
    checkpoint_every: int = 0  # steps between checkpoints (0: only at the end)
    keep_checkpoints: int = 2  # newest checkpoints kept; the previous good one survives until the next is complete
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", "mps"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # What a NaN/Inf loss does: stop with an error, skip the step, or restore the in-memory snapshot (tessera.train.guard)
    on_nonfinite: Literal["raise", "skip", "rollback"] = "raise"
    snapshot_every: int = 50  # steps between in-memory snapshots (used by on_nonfinite="rollback")
    max_rollbacks: int = 3  # rollbacks allowed in one run before a non-finite loss is an error
    replay_every: int = 0  # steps between replay checks (rerun a step, compare loss + gradient checksums); 0: off
    replay_rtol: float = 0.0  # relative tolerance of the replay comparison (0: bitwise, right on CPU)
    on_replay_mismatch: Literal["raise", "warn"] = "raise"
    strategy: Literal["ddp", "fsdp"] = "ddp"  # data parallelism under torchrun: DDP replicas or FSDP2 sharding
    progress: bool = True  # tqdm progress bar on rank 0
    tensorboard: bool = True  # also write TensorBoard events when tensorboard is installed

    def __post_init__(self) -> None:
        if self.steps < 1 or self.grad_accum < 1 or self.log_every < 1 or self.keep_checkpoints < 1:
            raise ValueError("train: steps, grad_accum, log_every and keep_checkpoints must be >= 1")
        if self.eval_every < 0 or self.checkpoint_every < 0:
            raise ValueError("train: eval_every and checkpoint_every must be >= 0")
        if self.snapshot_every < 1 or self.max_rollbacks < 0 or self.replay_every < 0 or self.replay_rtol < 0:
            raise ValueError("train: snapshot_every must be >= 1; max_rollbacks, replay_every, replay_rtol >= 0")


class StepOutput(NamedTuple):
    """What a training module's forward returns."""

    loss: torch.Tensor  # scalar: a mean, or a sum when the task defines batch_weight
    metrics: dict[str, Any]  # scalar tensors or floats, averaged over micro-batches and ranks for the logs


@dataclass
class Task:
    """Everything task-specific the loop needs.

    Attributes:
        module: the training module; `module(batch, step) -> StepOutput`. Its whole state_dict is checkpointed.
        batches: `(step, micro, rank, world_size) -> batch`, a pure function of its arguments (on CPU is fine).
        evaluate: `(module, step) -> metrics`, run on rank 0 in eval mode under no_grad.
        batch_weight: `(batch) -> float`; when given, StepOutput.loss is a sum normalised by the global weight.
        param_groups: `(module, weight_decay) -> groups` for the optimiser (default: decay on matrices only).
        save_artifact: `(module, folder)`, called on rank 0 at the end (e.g. save_pretrained).
        progress_keys: metrics shown live in the progress bar.
        find_unused_parameters: passed to DDP when some parameters get no gradient on some steps.
        fsdp_units: `(module) -> submodules` sharded one by one under FSDP (e.g. transformer blocks); the root is
            always sharded last.
    """

    module: nn.Module
    batches: Callable[[int, int, int, int], Any]
    evaluate: Callable[[nn.Module, int], dict[str, float]] | None = None
    batch_weight: Callable[[Any], float] | None = None
    param_groups: Callable[[nn.Module, float], list[dict]] | None = None
    save_artifact: Callable[[nn.Module, Path], None] | None = None
    progress_keys: tuple[str, ...] = ("loss",)
    find_unused_parameters: bool = False
    fsdp_units: Callable[[nn.Module], list[nn.Module]] | None = None


@dataclass
class FitResult:
    """What `fit` returns (on every rank)."""

    step: int
    run_dir: Path
    train_metrics: dict[str, float] = field(default_factory=dict)  # last logged training row
    eval_metrics: dict[str, float] = field(default_factory=dict)  # last evaluation
    resumed_from: int | None = None
    goodput: float = 0.0  # useful step time / elapsed time (tessera.train.guard.GoodputMeter)
    rollbacks: int = 0  # snapshot restores after non-finite losses
    replays: int = 0  # replay checks that passed


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Recursively move tensors in tuples/lists/dicts/NamedTuples to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(move_to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


# -- checkpoint (de)serialisation ------------------------------------------------------------------------------------
def _state_dict_options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, **kw)


def _full_model_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model state on CPU (a collective under FSDP: every rank calls it; rank 0 gets the tensors)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(module, options=_state_dict_options())


def _optimizer_to_tensors(module: nn.Module, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimiser state keyed by parameter name, so it loads at any world size and under DDP or FSDP alike."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    sd = get_optimizer_state_dict(module, opt, options=_state_dict_options())
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for name, state in sd.get("state", {}).items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{name}.{key}"] = value
            else:
                scalars[f"{name}.{key}"] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd.get("param_groups", [])]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _load_optimizer(module: nn.Module, opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    state: dict[str, dict[str, Any]] = {}
    for name, value in tensors.items():
        param, key = name[len("state.") :].rsplit(".", 1)
        state.setdefault(param, {})[key] = value
    for name, value in meta["scalars"].items():
        param, key = name.rsplit(".", 1)
        state.setdefault(param, {})[key] = value
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    set_optimizer_state_dict(module, opt, {"state": state, "param_groups": groups}, options=_state_dict_options())


def _load_model(module: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(module, tensors, options=_state_dict_options())


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    for i, s in enumerate(state.get("cuda", [])[: torch.cuda.device_count()]):
        torch.cuda.set_rng_state(s, i)
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def _gather_rng(rt: Runtime) -> list[dict[str, Any]]:
    mine = _rng_state()
    if not rt.distributed:
        return [mine]
    out: list[Any] = [None] * rt.world_size
    dist.all_gather_object(out, mine)  # our own RNG objects, never user files
    return out


# -- the loop ---------------------------------------------------------------------------------------------------------
def fit(
    task: Task,
    cfg: TrainConfig,
    optim_cfg: OptimConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    config: Any = None,
    runtime: Runtime | None = None,
    stop_after: int | None = None,
) -> FitResult:
    """Train `task` for `cfg.steps` optimiser steps, writing logs and checkpoints under `run_dir`.

    Args:
        task: the task (module, batches, hooks).
        cfg: loop settings.
        optim_cfg: optimiser and schedule settings.
        run_dir: the run's folder (config.yaml, metrics.csv, tb/, checkpoints/, final/).
        resume: continue from the newest intact checkpoint in `run_dir/checkpoints` (a fresh start if none).
        config: the recipe's resolved config dataclass, saved as `config.yaml`; on resume it must equal the saved one.
        runtime: an existing runtime (default: `init_runtime(cfg.device)`).
        stop_after: stop (without the end-of-run evaluation/export) once this step is reached; used to simulate
            interruptions in tests and to split long runs.

    Returns:
        A `FitResult`.

    Raises:
        ConfigError: on resume, when `config` differs from the run's saved config.
        CheckpointError: on resume, when the checkpoint's tensors do not fit the module (names the file).
        FloatingPointError: a non-finite loss with `on_nonfinite="raise"`.
    """
    rt = runtime or init_runtime(cfg.device)
    run_dir = Path(run_dir)
    ckpt_root = run_dir / "checkpoints"
    module = task.module.to(rt.device)
    fsdp = rt.distributed and cfg.strategy == "fsdp"
    blueprint = None
    if fsdp:
        if rt.is_main and (task.save_artifact is not None or task.evaluate is not None):
            # An unsharded twin on rank 0 that evaluation and export run on: a sharded forward is a collective, and
            # evaluation code may call submodules directly. Costs one model copy on rank 0.
            blueprint = copy.deepcopy(module)
        _fully_shard(module, task)
    groups = (task.param_groups or default_param_groups)(module, optim_cfg.weight_decay)
    opt = build_optimizer(groups, optim_cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.steps, optim_cfg.warmup_steps, optim_cfg.min_lr_ratio))

    start = 0
    resumed_from = None
    if rt.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    if resume:
        ckpt = load_latest(ckpt_root)
        if ckpt is not None:
            if config is not None and (run_dir / "config.yaml").exists():
                _check_same_config(config, run_dir / "config.yaml")
            check_model_fits(ckpt, module)
            _load_model(module, ckpt.tensors["model"])
            _load_optimizer(module, opt, ckpt.tensors.get("optimizer", {}), ckpt.state["optimizer"])
            sched.load_state_dict(ckpt.state["scheduler"])
            rngs = ckpt.state["rng"]
            rank_rng = rngs[rt.rank] if rt.rank < len(rngs) else None
            if rank_rng is not None:
                rank_rng["torch"] = ckpt.tensors["rng"][f"torch_rank{rt.rank}"]
                rank_rng["cuda"] = [ckpt.tensors["rng"][k] for k in sorted(ckpt.tensors["rng"]) if k.startswith(f"cuda_rank{rt.rank}_")]
                _set_rng_state(rank_rng)
            else:
                _log.warning("checkpoint has no RNG state for rank %d (world size changed); continuing with a fresh seed", rt.rank)
            start = resumed_from = ckpt.step
            if rt.is_main:
                _log.info("resumed from %s (step %d)", ckpt.path, ckpt.step)
    if config is not None and rt.is_main:
        dump_config(config, run_dir / "config.yaml")

    if rt.distributed and not fsdp:
        wrapped: nn.Module = DistributedDataParallel(
            module,
            device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
            find_unused_parameters=task.find_unused_parameters,
        )
    else:
        wrapped = module
    logger = RunLogger(run_dir, enabled=rt.is_main, resume_step=start, tensorboard=cfg.tensorboard)
    scaler = torch.amp.GradScaler(rt.device.type) if cfg.precision == "fp16" else None
    result = FitResult(step=start, run_dir=run_dir, resumed_from=resumed_from)
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    bar = None
    if rt.is_main and cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=start, desc=run_dir.name, dynamic_ncols=True)

    window: dict[str, list[float]] = {}
    window_start = time.perf_counter()
    meter = GoodputMeter()
    snapshot = Snapshot.take(start, module, opt) if cfg.on_nonfinite == "rollback" else None
    step = start
    try:
        for step in range(start, end):
            module.train()
            micro = [task.batches(step, m, rt.rank, rt.world_size) for m in range(cfg.grad_accum)]
            meter.begin()
            if task.batch_weight is not None:
                local_w = torch.tensor([float(sum(task.batch_weight(b) for b in micro))], dtype=torch.float64)
                if rt.distributed:
                    local_w = local_w.to(_coll_device(rt))
                    dist.all_reduce(local_w)
                total_w = float(local_w.item())
                if total_w <= 0:
                    raise ValueError(f"step {step}: the global batch has zero weight (no target tokens?)")
                scale = rt.world_size / total_w
            else:
                scale = 1.0 / cfg.grad_accum

            def forward_backward(micro=micro, step=step, scale=scale) -> tuple[float, dict[str, float]]:
                step_loss = 0.0
                step_metrics: dict[str, float] = {}
                for m, batch in enumerate(micro):
                    sync = contextlib.nullcontext()
                    last_micro = m == cfg.grad_accum - 1
                    if fsdp:
                        module.set_requires_gradient_sync(last_micro)  # type: ignore[operator]
                    elif rt.distributed and not last_micro:
                        sync = wrapped.no_sync()  # type: ignore[operator]
                    with sync:
                        with autocast(rt.device, cfg.precision):
                            out = wrapped(move_to_device(batch, rt.device), step)
                        loss = out.loss.float() * scale
                        (scaler.scale(loss) if scaler is not None else loss).backward()
                    step_loss += float(loss.detach())
                    for k, v in out.metrics.items():
                        step_metrics[k] = step_metrics.get(k, 0.0) + float(v) / cfg.grad_accum
                return step_loss, step_metrics

            replay = cfg.replay_every > 0 and (step + 1) % cfg.replay_every == 0
            rng_before = _rng_state() if replay else None
            step_loss, step_metrics = forward_backward()
            if replay and math.isfinite(step_loss):
                _replay_check(step, step_loss, forward_backward, rng_before, module, opt, rt, cfg, meter, result)
            finite = torch.tensor([1.0 if math.isfinite(step_loss) else 0.0])
            if rt.distributed:
                finite = finite.to(_coll_device(rt))
                dist.all_reduce(finite, op=dist.ReduceOp.MIN)
            if scaler is not None and float(finite.item()) == 1.0:
                scaler.unscale_(opt)
            grad_norm = float("nan")
            if optim_cfg.grad_clip > 0 and float(finite.item()) == 1.0:
                norm = torch.nn.utils.clip_grad_norm_(module.parameters(), optim_cfg.grad_clip)
                grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # DTensor under FSDP
                if cfg.on_nonfinite == "rollback" and scaler is None and not math.isfinite(grad_norm):
                    finite.fill_(0.0)  # NaN/Inf gradients with a finite loss: the update would poison the weights
            if float(finite.item()) < 1.0:
                opt.zero_grad(set_to_none=True)
                meter.end(useful=False)
                if cfg.on_nonfinite == "raise":
                    raise FloatingPointError(f"non-finite loss at step {step}; last checkpoint: {_latest_name(ckpt_root)}")
                if cfg.on_nonfinite == "rollback":
                    if result.rollbacks >= cfg.max_rollbacks:
                        raise FloatingPointError(f"non-finite loss at step {step} after {result.rollbacks} rollbacks "
                                                 f"(train.max_rollbacks); last checkpoint: {_latest_name(ckpt_root)}")
                    snapshot.restore(module, opt)  # type: ignore[union-attr]
                    result.rollbacks += 1
                    _log.warning("non-finite loss at step %d: restored the in-memory snapshot of step %d; training "
                                 "continues with the next batch", step, snapshot.step)  # type: ignore[union-attr]
                else:
                    _log.warning("non-finite loss at step %d: step skipped", step)
                sched.step()
                continue
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            meter.end(useful=True)
            if snapshot is not None and (step + 1) % cfg.snapshot_every == 0:
                snapshot = Snapshot.take(step + 1, module, opt)

            row = {"loss": step_loss, **step_metrics, "grad_norm": grad_norm, "lr": opt.param_groups[0]["lr"]}
            for k, v in row.items():
                window.setdefault(k, []).append(v)
            done = step + 1
            if done % cfg.log_every == 0 or done == end:
                means = {k: float(np.mean(v)) for k, v in window.items()}
                means = all_reduce_mean(means, rt)
                means["step_s"] = (time.perf_counter() - window_start) / len(window["loss"])
                means["goodput"] = result.goodput = meter.goodput()
                logger.log(done, means)
                result.train_metrics = means
                window, window_start = {}, time.perf_counter()
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{row[k]:.4g}" for k in task.progress_keys if k in row}, refresh=False)
            is_last = done == cfg.steps
            if task.evaluate is not None and ((cfg.eval_every and done % cfg.eval_every == 0) or is_last):
                result.eval_metrics = _evaluate(task, _unsharded(module, blueprint) if fsdp else module, done, rt)
                if rt.is_main:
                    logger.log(done, {f"eval/{k}": v for k, v in result.eval_metrics.items()})
            if (cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or done == end:
                _save(ckpt_root, done, module, opt, sched, rt, cfg.keep_checkpoints)
            result.step = done
        if result.step == cfg.steps and task.save_artifact is not None:
            if fsdp:
                twin = _unsharded(module, blueprint)
                if rt.is_main:
                    task.save_artifact(twin, run_dir / "final")
            elif rt.is_main:
                task.save_artifact(module, run_dir / "final")
        rt.barrier()
        result.goodput = meter.goodput()
    finally:
        if bar is not None:
            bar.close()
        logger.close()
    return result


def _replay_check(step, loss, forward_backward, rng_before, module, opt, rt, cfg, meter, result) -> None:
    """Rerun the step from the same RNG state and compare loss and gradient checksums (tessera.train.guard)."""
    t0 = time.perf_counter()
    first = grad_checksum(module)
    rng_after = _rng_state()
    opt.zero_grad(set_to_none=True)
    _set_rng_state(rng_before)
    again, _ = forward_backward()
    second = grad_checksum(module)
    _set_rng_state(rng_after)
    ok = checksums_match(first, second, cfg.replay_rtol) and (
        again == loss if cfg.replay_rtol == 0 else math.isclose(again, loss, rel_tol=cfg.replay_rtol))
    flag = torch.tensor([1.0 if ok else 0.0])
    if rt.distributed:
        flag = flag.to(_coll_device(rt))
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    meter.add_lost(time.perf_counter() - t0)
    if float(flag.item()) == 1.0:
        result.replays += 1
        return
    msg = (f"replay check failed at step {step}: loss {loss!r} then {again!r}, gradient checksum "
           f"{first.tolist()} then {second.tolist()} (rank {rt.rank}); the computation is not reproducible")
    if cfg.on_replay_mismatch == "raise":
        raise ReplayMismatchError(msg)
    _log.warning(msg)


def _coll_device(rt: Runtime) -> torch.device:
    return rt.device if rt.backend == "nccl" else torch.device("cpu")


def _latest_name(root: Path) -> str:
    latest = root / "LATEST"
    return latest.read_text().strip() if latest.exists() else "none"


def _fully_shard(module: nn.Module, task: Task) -> None:
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:  # torch < 2.6 keeps FSDP2 under _composable
        try:
            from torch.distributed._composable.fsdp import fully_shard
        except ImportError as exc:
            raise RuntimeError("strategy='fsdp' needs FSDP2 (torch >= 2.4); use strategy='ddp'") from exc
    for unit in task.fsdp_units(module) if task.fsdp_units is not None else []:
        fully_shard(unit)
    fully_shard(module)


def _unsharded(module: nn.Module, blueprint: nn.Module | None) -> nn.Module | None:
    """Copy the sharded module's full state into rank 0's unsharded twin (a collective: every rank calls it)."""
    full = _full_model_state(module)
    if blueprint is not None:
        blueprint.load_state_dict(full)
    return blueprint


def _evaluate(task: Task, module: nn.Module | None, step: int, rt: Runtime) -> dict[str, float]:
    """Evaluate on rank 0 while the other ranks wait."""
    metrics: dict[str, float] = {}
    if rt.is_main:
        module.eval()
        with torch.no_grad():
            metrics = {k: float(v) for k, v in task.evaluate(module, step).items()}  # type: ignore[misc]
        module.train()
    rt.barrier()
    return metrics


def _save(root: Path, step: int, module: nn.Module, opt, sched, rt: Runtime, keep: int) -> None:
    rngs = _gather_rng(rt)  # collectives: every rank takes part
    model_state = _full_model_state(module)
    opt_tensors, opt_meta = _optimizer_to_tensors(module, opt)
    if rt.is_main:
        rng_tensors: dict[str, torch.Tensor] = {}
        rng_json = []
        for r, s in enumerate(rngs):
            rng_tensors[f"torch_rank{r}"] = s["torch"]
            for i, c in enumerate(s["cuda"]):
                rng_tensors[f"cuda_rank{r}_{i:02d}"] = c
            rng_json.append({"numpy": s["numpy"], "python": s["python"]})
        save_checkpoint(
            root,
            step,
            {"model": model_state, "optimizer": opt_tensors, "rng": rng_tensors},
            {"optimizer": opt_meta, "scheduler": _jsonable(sched.state_dict()), "rng": rng_json, "world_size": rt.world_size},
            keep=keep,
        )
    rt.barrier()


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items() if not callable(v)}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.item() if obj.numel() == 1 else obj.tolist()
    return obj


def _check_same_config(config: Any, saved_path: Path) -> None:
    import yaml

    saved = yaml.safe_load(saved_path.read_text())
    now = to_dict(config)
    diffs = sorted(_diff_keys(saved, now))
    if diffs:
        raise ConfigError(
            f"cannot resume {saved_path.parent}: the config differs from the run's saved config at {', '.join(diffs)} "
            "(start a new run folder, or restore the original settings)"
        )


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in set(a) | set(b):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return [] if list(a) == list(b) else [prefix.rstrip(".")]
    return [] if a == b else [prefix.rstrip(".")]
