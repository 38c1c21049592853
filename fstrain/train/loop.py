"""One style fine-tuning run: G' initialised from the base G, trained against D on a style's images.

Per step (rosinality's schedule, without path-length regularisation):
  D phase   L_D = softplus(-D(x)) + softplus(D(G'(z)))             every step
  R1 phase  r1_gamma/2 * |grad_x D(x)|^2 * d_reg_every               every `d_reg_every` steps (lazy)
  G phase   L = L_adv + lambda_sem * L_sem(G(z), G'(z)) + lambda_pair * L_pair(G'(w+), S)     (Eq. 3)
  EMA       g_ema <- decay * g_ema + (1 - decay) * G',  decay = 0.5 ** (1 / ema_half_life_steps)
The mode switches the terms: baseline (L_adv only, gives G*), sc (+L_sem), pc (+L_pair), sc+pc (both).

Reproducibility: all randomness of a step (z, noise) comes from a generator seeded by (seed, step, rank), data
order from (seed, epoch), and checkpoints hold weights, optimiser moments, data positions and RNG states, so a run
resumed from step k follows the uninterrupted run exactly.

Devices and scale come from Accelerate: the device, mixed precision on GPU (bf16/fp16 autocast + fp16 loss
scaling via the prepared optimisers), gradient accumulation (Accelerator.backward divides by the number of
micro-batches) and several processes (launched with torchrun / accelerate launch; gradients are averaged across
processes by hand because G' is called through more than one entry point per backward, which DDP's wrapper
does not allow).
"""
from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from fstrain import layout, provenance
from fstrain.config import config_to_dict
from fstrain.data import storage
from fstrain.data.shards import list_shards
from fstrain.losses import PairLoss, SemanticLoss, StylizationLoss, lazy_regularization_ratio
from fstrain.models.checkpoints import MEAN_LATENT_SAMPLES, metadata_uri, save_generator
from fstrain.models.stylegan2 import Discriminator, Generator
from fstrain.settings import PipelineConfig
from fstrain.train import checkpointing, resources, visibility
from fstrain.train.data import ShardStream, pair_decoder, style_image_decoder



# ---------------------------------------------------------------- small helpers


def make_accelerator(mixed_precision: str, gradient_accumulation_steps: int):
    from accelerate import Accelerator
    on_gpu = torch.cuda.is_available()
    if mixed_precision not in ("no", "bf16", "fp16"):
        raise ValueError(f"train.mixed_precision must be no, bf16 or fp16; got {mixed_precision!r}")
    # Mixed precision is a GPU feature here; on CPU the tiny test configs run in float32.
    return Accelerator(cpu=not on_gpu, mixed_precision=mixed_precision if on_gpu else "no",
                       gradient_accumulation_steps=gradient_accumulation_steps)


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """CPU RNG for everything random in one step; well mixed so nearby (seed, step) pairs are unrelated."""
    state = np.random.SeedSequence([seed, step, rank]).generate_state(2, dtype=np.uint64)
    return torch.Generator(device="cpu").manual_seed(int(state[0] >> np.uint64(1)))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.mul_(decay).add_(p.detach(), alpha=1 - decay)


def average_gradients(module: nn.Module, world_size: int) -> None:
    """Mean of the gradients over processes, in one flat all-reduce (missing grads count as zero)."""
    if world_size <= 1:
        return
    params = [p for p in module.parameters() if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").clone() for k, v in module.state_dict().items()}


def comparable_config(config: PipelineConfig) -> dict[str, Any]:
    """The config as saved in checkpoints, without `train.steps` (a resumed run may be asked to go further)."""
    data = config_to_dict(config)
    data["train"].pop("steps", None)
    return data


# ---------------------------------------------------------------- the run


@dataclass
class Networks:
    g_base: Generator            # frozen: the reference for L_sem and the top row of sample grids
    g: Generator                 # G', trained
    g_ema: Generator
    d: Discriminator
    latent_avg: torch.Tensor


# Train keys that do not change what a fine-tune learns (when it logs, samples or checkpoints), and the per-style
# tables that `fine_tune_settings` resolves to the style's own value.
_NOT_SHAPING = ("steps", "checkpoint_every", "sample_every", "sample_grid_size", "lr_by_style", "pair_level_by_style")
_SEMANTIC_KEYS = ("lambda_sem", "lambda_id", "lambda_eyes")
_PAIR_KEYS = ("lambda_pair", "pair_level")


def fine_tune_settings(config: PipelineConfig, style: str, mode: str) -> dict[str, Any]:
    """The settings that shape what a fine-tune of `style` in `mode` learns (without its step count): the data
    settings and the train keys its terms use, per-style tables resolved (`lr`, `pair_level` are the style's own).
    A pipeline stage records them, so changing one reruns the stages it shapes and only those."""
    use_sem, use_pair = resources.mode_terms(mode)
    train = {k: v for k, v in config_to_dict(config.train).items() if k not in _NOT_SHAPING
             and (use_sem or k not in _SEMANTIC_KEYS) and (use_pair or k not in _PAIR_KEYS)}
    train["lr"] = config.train.lr_for(style)
    if use_pair:
        train["pair_level"] = config.train.level_for(style)
    return {**{f"train.{k}": v for k, v in train.items()},
            **{f"data.{k}": v for k, v in config_to_dict(config.data).items()}}


class FineTuneRun:
    """State and one training step of a run. `run_finetune` drives it; tests may drive it directly.

    A run whose checkpoints were made with another config is refused (ResumeError), unless
    `restart_on_config_change`: then it starts again from step 0 and says why (the pipeline's rerun of a stage whose
    settings changed)."""

    def __init__(self, config: PipelineConfig, *, style: str, mode: str, root: str, run_id: str,
                 restart_on_config_change: bool = False):
        self.restart_on_config_change = restart_on_config_change
        self.config = config
        self.tcfg = config.train
        self.style, self.mode, self.root, self.run_id = style, mode, root, run_id
        self.use_sem, self.use_pair = resources.mode_terms(mode)
        self.run_dir = layout.mode_run(root, run_id, style, mode)
        self.accelerator = make_accelerator(self.tcfg.mixed_precision, self.tcfg.gradient_accumulation_steps)
        self.device = self.accelerator.device
        self.rank = self.accelerator.process_index
        self.world_size = self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process

        self.base = resources.load_base_generator(config.models, root, expected_size=config.data.image_size)
        self.nets = self._build_networks()
        size, n_latent, style_dim = self.nets.g.size, self.nets.g.n_latent, self.nets.g.style_dim
        self.style_stream = ShardStream(
            layout.dataset(root, style), style_image_decoder(size), seed=self.tcfg.seed, rank=self.rank,
            world_size=self.world_size, shuffle_buffer=config.data.shuffle_buffer, what=f"style dataset '{style}'",
            how_to_fix=f"Ingest the '{style}' style images first (fstrain.ingest writes <root>/datasets/{style}/).")
        self.pair_stream = None
        if self.use_pair:
            level = self.tcfg.level_for(style)
            self.pair_stream = ShardStream(
                layout.pairs(root, run_id, style, level), pair_decoder(size, n_latent, style_dim),
                seed=self.tcfg.seed + 1, rank=self.rank, world_size=self.world_size,
                shuffle_buffer=config.data.shuffle_buffer, what=f"level-{level} pseudo-pairs of '{style}'",
                how_to_fix=f"Build this run's pseudo-pairs first (python -m fstrain.pairs CONFIG --style {style} "
                           f"--root ROOT --run-id {run_id}, from the run's baseline G*).")

        lpips = resources.load_lpips_metric(config.models, root).to(self.device) \
            if (self.use_sem or self.use_pair) else None
        identity = None
        if self.use_sem and self.tcfg.lambda_id > 0:
            identity = resources.load_identity_net(config.models, root).to(self.device)
        semantic = SemanticLoss(lpips, identity, self.tcfg.lambda_id, lambda_eyes=self.tcfg.lambda_eyes) \
            if self.use_sem else None
        self.loss = StylizationLoss(semantic,
                                    PairLoss(lpips) if self.use_pair else None, lambda_sem=self.tcfg.lambda_sem,
                                    lambda_pair=self.tcfg.lambda_pair, r1_gamma=self.tcfg.r1_gamma,
                                    r1_every=self.tcfg.d_reg_every)

        ratio = lazy_regularization_ratio(self.tcfg.d_reg_every)
        lr = self.tcfg.lr_for(self.style)
        g_optim = torch.optim.Adam(self.nets.g.parameters(), lr=lr, betas=(0.0, 0.99))
        d_optim = torch.optim.Adam(self.nets.d.parameters(), lr=lr * ratio,
                                   betas=(0.0 ** ratio, 0.99 ** ratio))
        self.step = 0
        self.inputs = self._input_provenance(lpips_used=lpips is not None, identity_used=identity is not None)
        self.resumed_from = self._resume(g_optim, d_optim)
        self.g_optim, self.d_optim = self.accelerator.prepare(g_optim, d_optim)
        self.ema_decay = 0.5 ** (1.0 / self.tcfg.ema_half_life_steps) if self.tcfg.ema_half_life_steps > 0 else 0.0
        self.fixed_z = torch.randn(self.tcfg.sample_grid_size, style_dim,
                                   generator=torch.Generator().manual_seed(self.tcfg.seed + 7919)).to(self.device)

    def _input_provenance(self, *, lpips_used: bool, identity_used: bool) -> dict[str, Any]:
        """sha256 of what G' is made from (base G, dataset shards, the pairs' own records, the loss nets); the
        published style carries it, so a republish happens only when one of them changed."""
        models = self.config.models
        dataset = {storage.basename(u): provenance.sha256_uri(u) for u in list_shards(layout.dataset(self.root, self.style))}
        inputs: dict[str, Any] = {"base_generator": self.base.sha256, "dataset": provenance.sha256_json(dataset)}
        if self.use_pair:
            prefix = layout.pairs(self.root, self.run_id, self.style, self.tcfg.level_for(self.style))
            records = {storage.basename(u): provenance.read_record(layout.shard_provenance(u))
                       for u in list_shards(prefix)}
            inputs["pairs"] = provenance.sha256_json(records)
        if lpips_used:
            inputs["lpips_backbone"] = resources.model_sha256(models, "lpips_backbone", self.root)
        if identity_used:
            inputs["identity"] = resources.model_sha256(models, "identity", self.root)
        return inputs

    def _build_networks(self) -> Networks:
        loaded = self.base.loaded
        g_base = resources.frozen(loaded.generator.to(self.device))
        g = resources.clone_module(g_base).train()
        g_ema = resources.frozen(copy.deepcopy(g_base))
        d = loaded.discriminator
        if d is None:
            warnings.warn(f"{self.base.uri} has no discriminator ('d'); starting D from random weights "
                          f"(seed {self.tcfg.seed}). Fine-tuning converges faster from the checkpoint's D.")
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.tcfg.seed)
                d = Discriminator(g_base.size, channel_multiplier=g_base.channel_multiplier,
                                  channel_max=g_base.channel_max, blur_kernel=g_base.blur_kernel)
        d = d.to(self.device).train()
        resources.set_requires_grad(d, True)
        return Networks(g_base=g_base, g=g, g_ema=g_ema, d=d, latent_avg=loaded.latent_avg.detach().cpu())

    # -- checkpoints
    def _resume(self, g_optim: torch.optim.Optimizer, d_optim: torch.optim.Optimizer) -> int | None:
        latest = checkpointing.latest_checkpoint(self.run_dir)
        if latest is None:
            return None
        step, uri = latest
        ckpt = checkpointing.load_checkpoint(uri)
        changed = provenance.changes(ckpt["inputs"], self.inputs) if "inputs" in ckpt else []
        diffs = checkpointing.config_differences(ckpt["config"], comparable_config(self.config))
        if diffs and self.restart_on_config_change:
            changed.append(f"config changed ({', '.join(diffs)})")
        if changed:
            # Its checkpoints were trained on other inputs (say the pairs of a retrained baseline): start again.
            print(f"{self.run_dir} restarted from step 0: {'; '.join(changed)}", flush=True)
            if self.is_main:
                final = layout.final_generator(self.run_dir)
                for stale in (layout.latest(self.run_dir), final, metadata_uri(final)):
                    storage.delete(stale)
            self.accelerator.wait_for_everyone()
            return None
        if diffs:
            raise checkpointing.ResumeError(
                f"{uri}: run '{self.run_id}' was started with a different config (keys: {', '.join(diffs)}); "
                f"resume with the original config or start a new run id")
        positions = ckpt["data"]
        if len(positions["style"]) != self.world_size:
            raise checkpointing.ResumeError(
                f"{uri}: saved with {len(positions['style'])} processes, resumed with {self.world_size}; "
                f"resume with the same number of processes or start a new run id")
        self.nets.g.load_state_dict(ckpt["g"])
        self.nets.g_ema.load_state_dict(ckpt["g_ema"])
        self.nets.d.load_state_dict(ckpt["d"])
        g_optim.load_state_dict(ckpt["g_optim"])
        d_optim.load_state_dict(ckpt["d_optim"])
        self.style_stream.load_state_dict(positions["style"][self.rank])
        if self.pair_stream is not None:
            self.pair_stream.load_state_dict(positions["pairs"][self.rank])
        checkpointing.restore_rng_state(ckpt["rng"])
        self.step = int(ckpt["step"])
        return self.step

    def save_checkpoint(self) -> str | None:
        """All processes call this (positions are gathered); the main process writes."""
        from accelerate.utils import gather_object
        style_positions = gather_object([self.style_stream.state_dict()])
        pair_positions = gather_object([self.pair_stream.state_dict()]) if self.pair_stream is not None else []
        uri = None
        if self.is_main:
            payload = {
                "g": cpu_state(self.nets.g), "g_ema": cpu_state(self.nets.g_ema), "d": cpu_state(self.nets.d),
                "g_optim": self.g_optim.state_dict(), "d_optim": self.d_optim.state_dict(),
                "rng": checkpointing.capture_rng_state(),
                "data": {"style": style_positions, "pairs": pair_positions},
                "config": comparable_config(self.config), "style": self.style, "mode": self.mode,
                "run_id": self.run_id, "latent_avg": self.nets.latent_avg,
                "base_generator_sha256": self.base.sha256, "inputs": self.inputs,
            }
            uri = checkpointing.save_checkpoint(self.run_dir, self.step, payload)
        self.accelerator.wait_for_everyone()
        return uri

    # -- one step
    def _real_batch(self) -> torch.Tensor:
        return torch.stack(self.style_stream.next_batch(self.config.data.batch_size)).to(self.device)

    def _pair_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        samples = self.pair_stream.next_batch(self.config.data.batch_size)
        images = torch.stack([s for s, _ in samples]).to(self.device)
        w_plus = torch.stack([w for _, w in samples]).to(self.device)
        return images, w_plus

    def train_step(self) -> dict[str, float]:
        """One optimiser step of D (+ lazy R1) and of G'; returns the step's loss terms (means over micro-batches)."""
        nets, acc, tcfg = self.nets, self.accelerator, self.tcfg
        rng = step_generator(tcfg.seed, self.step, self.rank)
        batch = self.config.data.batch_size
        micro_batches = tcfg.gradient_accumulation_steps
        style_dim = nets.g.style_dim
        logs: dict[str, float] = {}

        def log(name: str, value: torch.Tensor) -> None:
            logs[name] = logs.get(name, 0.0) + float(value.detach()) / micro_batches

        # D phase
        resources.set_requires_grad(nets.g, False)
        resources.set_requires_grad(nets.d, True)
        reals = []
        for _ in range(micro_batches):
            real = self._real_batch()
            reals.append(real)
            z = torch.randn(batch, style_dim, generator=rng).to(self.device)
            noise = nets.g.noise_from(rng, batch, self.device)
            with torch.no_grad(), acc.autocast():
                fake, _ = nets.g([z], noise=noise)
            with acc.autocast():
                d_terms = self.loss.d_main(nets.d(real), nets.d(fake))
            acc.backward(d_terms["d_adv"])
            log("d_adv", d_terms["d_adv"])
        average_gradients(nets.d, self.world_size)
        self.d_optim.step()
        self.d_optim.zero_grad(set_to_none=True)

        # Lazy R1, in float32 (second-order gradients under autocast are fragile), on the D phase's reals.
        if tcfg.d_reg_every > 0 and self.step % tcfg.d_reg_every == 0:
            for real in reals:
                real = real.detach().requires_grad_(True)
                reg = self.loss.d_reg(nets.d(real), real)
                acc.backward(reg["d_reg"])
                log("r1", reg["r1"])
            average_gradients(nets.d, self.world_size)
            self.d_optim.step()
            self.d_optim.zero_grad(set_to_none=True)

        # G phase (Eq. 3)
        resources.set_requires_grad(nets.g, True)
        resources.set_requires_grad(nets.d, False)
        for _ in range(micro_batches):
            z = torch.randn(batch, style_dim, generator=rng).to(self.device)
            noise = nets.g.noise_from(rng, batch, self.device)
            inputs: dict[str, torch.Tensor] = {}
            with acc.autocast():
                fake, _ = nets.g([z], noise=noise)
                if self.use_sem:
                    with torch.no_grad():
                        inputs["reference"], _ = nets.g_base([z], noise=noise)
                if self.use_pair:
                    inputs["style_images"], w_plus = self._pair_batch()
                    inputs["rendered"], _ = nets.g([w_plus], input_is_latent=True, randomize_noise=False)
                g_terms = self.loss.g_main(nets.d(fake), fake=fake, **inputs)
            acc.backward(g_terms["g_total"])
            for name, value in g_terms.items():
                log(name, value)
        average_gradients(nets.g, self.world_size)
        self.g_optim.step()
        self.g_optim.zero_grad(set_to_none=True)
        resources.set_requires_grad(nets.g, False)

        update_ema(nets.g_ema, nets.g, self.ema_decay)
        self.step += 1
        return logs

    # -- outputs
    @torch.no_grad()
    def sample_grid(self) -> np.ndarray:
        """Top row G(z), bottom row G'(z) (the EMA weights), same fixed z and stored noise; labelled with the
        rows' names, the step, style and mode, and at least 256 px wide."""
        base, _ = self.nets.g_base([self.fixed_z], randomize_noise=False)
        styled, _ = self.nets.g_ema([self.fixed_z], randomize_noise=False)
        return visibility.labelled_sample_grid([base, styled], ["G(z)", "G'(z)"],   # PIL's font has no U+2032
                                               f"step {self.step}   {self.style}   {self.mode}")

    def hyperparameters(self) -> dict[str, Any]:
        """What TensorBoard's HPARAMS tab shows for this run: style, mode, run id and every training setting."""
        return {"style": self.style, "mode": self.mode, "run_id": self.run_id,
                "batch_size": self.config.data.batch_size, "image_size": self.nets.g.size,
                **{f"train.{k}": v for k, v in config_to_dict(self.tcfg).items()}}

    def publish_final(self) -> str:
        """g_ema in rosinality's layout at `<run_dir>/final/generator.pt`, with run metadata alongside."""
        rng = torch.Generator().manual_seed(0)
        latent_avg = self.nets.g_ema.mean_latent(MEAN_LATENT_SAMPLES, generator=rng).reshape(-1)
        metadata = {
            "style": self.style, "mode": self.mode, "run_id": self.run_id, "steps": self.step,
            "lambda_sem": self.tcfg.lambda_sem if self.use_sem else 0.0,
            "lambda_id": self.tcfg.lambda_id if self.use_sem else 0.0,
            "lambda_eyes": self.tcfg.lambda_eyes if self.use_sem else 0.0,
            "lambda_pair": self.tcfg.lambda_pair if self.use_pair else 0.0,
            "pair_level": self.tcfg.level_for(self.style) if self.use_pair else None,
            "lr": self.tcfg.lr_for(self.style),
            "base_generator": self.base.uri, "base_generator_sha256": self.base.sha256,
            "seed": self.tcfg.seed, "latent_avg_source": f"mean_latent({MEAN_LATENT_SAMPLES}, seed=0) of g_ema",
            "inputs": {**self.inputs, "settings": {**config_to_dict(self.tcfg), "steps": self.step}},
        }
        return save_generator(layout.final_generator(self.run_dir), self.nets.g_ema, latent_avg,
                              metadata)


def run_finetune(config: PipelineConfig, *, style: str, mode: str, root: str, run_id: str,
                 steps: int | None = None, progress: visibility.ProgressCallback | None = None,
                 restart_on_config_change: bool = False) -> dict[str, Any]:
    """Fine-tune G' for one style and mode; resume from `<root>/runs/<run_id>/<style>/<mode>/` when it exists
    (made with another config: refused, or restarted from step 0 with `restart_on_config_change`).

    Returns {"final_step", "resumed_from", "checkpoint", "generator" (final g_ema, rosinality layout),
    "run_dir", "metrics" (last record), "skipped_samples"}.
    """
    total = config.train.steps if steps is None else int(steps)
    run = FineTuneRun(config, style=style, mode=mode, root=root, run_id=run_id,
                      restart_on_config_change=restart_on_config_change)
    if run.step > total:
        raise checkpointing.ResumeError(f"{run.run_dir}: the checkpoint is at step {run.step}, past the requested "
                                        f"{total} steps; ask for at least {run.step} steps or use a new run id")
    tcfg = config.train
    final_uri = layout.final_generator(run.run_dir)
    metrics = visibility.MetricsLog(layout.metrics_log(run.run_dir))
    tensorboard = None
    if run.is_main:
        metrics.resume(run.step)
        tensorboard = visibility.TensorBoardLog(layout.tensorboard(run.run_dir), purge_step=run.step + 1)
    bar = visibility.ProgressBar(total, run.step, run.is_main, f"{style}/{mode}", progress)
    checkpoint_uri = checkpointing.latest_checkpoint(run.run_dir)
    checkpoint_uri = checkpoint_uri[1] if checkpoint_uri else None
    try:
        while run.step < total:
            started = time.perf_counter()
            losses = run.train_step()
            record = {"step": run.step, **losses, "seconds_per_step": time.perf_counter() - started}
            bar.update(run.step, losses)
            last = run.step == total
            if run.is_main:
                metrics.append(record)
                if run.step == 1:      # a fresh run (a resumed one wrote them in its first event file)
                    tensorboard.hparams(run.hyperparameters(), [f"loss/{k}" for k in losses])
                tensorboard.scalars(run.step, {f"loss/{k}": v for k, v in losses.items()})
                if run.step % tcfg.sample_every == 0 or last:
                    grid = run.sample_grid()
                    visibility.write_png(layout.sample_grid(run.run_dir, run.step), grid)
                    tensorboard.image(run.step, f"samples/{style}_{mode}_G_top_Gprime_bottom", grid)
            if run.step % tcfg.checkpoint_every == 0 or last:
                run.save_checkpoint()
                checkpoint_uri = layout.checkpoint(run.run_dir, run.step)
                if run.is_main:
                    metrics.flush()
                    tensorboard.flush()
        if run.is_main and (run.resumed_from != total or not storage.exists(final_uri)):
            run.publish_final()
        run.accelerator.wait_for_everyone()
    finally:
        bar.close()
        if tensorboard is not None:
            tensorboard.close()
    skipped = {"style": run.style_stream.position.skipped}
    if run.pair_stream is not None:
        skipped["pairs"] = run.pair_stream.position.skipped
    return {"style": style, "mode": mode, "run_id": run_id, "run_dir": run.run_dir, "final_step": run.step,
            "resumed_from": run.resumed_from, "checkpoint": checkpoint_uri, "generator": final_uri,
            "metrics": metrics.records[-1] if metrics.records else None, "skipped_samples": skipped}
