"""XARModule: next-X prediction trained with per-entity flow matching and Noisy Context Learning.

Latents are either the image's own patches (``latent="patch"``, the tiniest preset) or the
continuous latents of the family's KL autoencoder (``latent="kl"``). The transformer never sees
pixels directly; ``generate`` returns images in [-1, 1].
"""

from __future__ import annotations

import copy
import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.core.module import OptimConfig, ZooModule
from zoo.errors import ConfigError
from zoo.models.xar.autoencoder import AutoencoderConfig, KLAutoencoder, load_autoencoder_weights
from zoo.models.xar.model import XARTransformer
from zoo.models.xar.sampler import sample_sequence


def patchify(x: Tensor, p: int) -> Tensor:
    """[B, C, H, W] -> [B, (H/p)(W/p), C p p] in raster order."""
    b, c, h, w = x.shape
    return x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), c * p * p)


def unpatchify(tokens: Tensor, p: int, c: int) -> Tensor:
    b, n, _ = tokens.shape
    g = math.isqrt(n)
    return tokens.reshape(b, g, g, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, c, g * p, g * p)


def hold_then_cosine(cfg: OptimConfig, total_steps: int, hold: float):
    """Warm-up, constant lr until ``hold`` of the run, then cosine to min_lr_ratio.

    Upstream hard-codes this as epochs 600-800 of 800; here it is a fraction of the configured run.
    """
    warmup = cfg.warmup_steps(total_steps)
    start = max(warmup, int(hold * total_steps))

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if step < start:
            return 1.0
        progress = min(1.0, (step - start) / max(1, total_steps - start))
        return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


class XARModule(ZooModule):
    """xAR (Ren et al., 2025): class-conditional image generation by next-entity flow matching.

        >>> m = XARModule(image_size=8, patch_size=2, dim=32, encoder_depth=1, decoder_depth=1, num_heads=2)
        >>> images = m.generate(torch.tensor([3, 7]), num_steps=4)        # [2, 1, 8, 8] in [-1, 1]
    """

    family = "xar"
    pipeline_tag = "unconditional-image-generation"

    def __init__(
        self,
        image_size: int = 8,
        channels: int = 1,
        num_classes: int = 10,
        latent: Literal["patch", "kl"] = "patch",
        patch_size: int = 2,
        autoencoder: AutoencoderConfig | None = None,
        autoencoder_weights: str | None = None,
        latent_scale: float = 1.0,
        entity: Literal["token", "cell", "subsample", "image"] = "cell",
        entity_size: int = 2,
        dim: int = 64,
        encoder_depth: int = 2,
        decoder_depth: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        drop_path: float = 0.0,
        context: Literal["noisy", "clean"] = "noisy",
        label_drop: float = 0.1,
        t_logit_mean: float = 0.0,
        t_logit_std: float = 1.0,
        ema_decay: float = 0.9999,
        lr_hold: float = 0.0,
        sample_steps: int = 40,
        solver: Literal["sde", "ode"] = "sde",
        cfg_scale: float = 2.7,
        eval_samples: int = 0,
        optim: OptimConfig | None = None,
    ):
        super().__init__(optim=optim)
        if eval_samples and (channels, image_size, num_classes) != (1, 8, 10):
            raise ConfigError("eval_samples scores samples with the shipped 8x8 digit classifier; it needs "
                              "channels=1, image_size=8, num_classes=10 (set eval_samples=0 for other data)")
        if latent not in ("patch", "kl"):
            raise ConfigError(f"latent={latent!r}; use 'patch' (identity patches) "
                              "or 'kl' (the family's KL autoencoder)")
        if context not in ("noisy", "clean"):
            raise ConfigError(f"context={context!r}; use 'noisy' (Noisy Context Learning) or 'clean' (teacher forcing)")
        if not 0 <= ema_decay < 1:
            raise ConfigError(f"ema_decay={ema_decay} must be in [0, 1); 0 disables EMA")
        self.image_size, self.channels, self.num_classes = image_size, channels, num_classes
        self.latent, self.patch_size, self.latent_scale = latent, patch_size, latent_scale
        self.context, self.label_drop = context, label_drop
        self.t_logit_mean, self.t_logit_std = t_logit_mean, t_logit_std
        self.ema_decay, self.lr_hold = ema_decay, lr_hold
        self.sample_steps, self.solver, self.cfg_scale = sample_steps, solver, cfg_scale
        self.autoencoder_weights = autoencoder_weights
        self.eval_samples = eval_samples
        self._quality = None  # the classifier-space scorer, built on first use (not saved)

        if latent == "kl":
            ae_cfg = AutoencoderConfig.coerce(autoencoder, channels=channels, resolution=image_size)
            self.autoencoder = KLAutoencoder(ae_cfg)
            self.autoencoder.requires_grad_(False)  # frozen: trained separately (XARAutoencoderModule)
            latent_channels, latent_size = ae_cfg.z_channels, ae_cfg.latent_size
        else:
            self.autoencoder = None
            latent_channels, latent_size = channels, image_size
        if latent_size % patch_size:
            raise ConfigError(f"patch_size={patch_size} must divide the latent size {latent_size}")
        self.latent_channels, self.latent_size = latent_channels, latent_size
        self.net = XARTransformer(
            token_dim=latent_channels * patch_size**2, grid=latent_size // patch_size, entity=entity,
            entity_size=entity_size, dim=dim, encoder_depth=encoder_depth, decoder_depth=decoder_depth,
            num_heads=num_heads, mlp_ratio=mlp_ratio, num_classes=num_classes, dropout=dropout,
            attn_dropout=attn_dropout, drop_path=drop_path)
        self.ema = copy.deepcopy(self.net).requires_grad_(False) if ema_decay > 0 else None

    # ------------------------------------------------------------------ latents
    def encode(self, images: Tensor) -> Tensor:
        """Images [B, C, H, W] in [-1, 1] -> latent tokens [B, grid*grid, token_dim] (raster order)."""
        if self.autoencoder is not None:
            with torch.no_grad():
                z = self.autoencoder.encode(images).mode()
        else:
            z = images
        return patchify(z * self.latent_scale, self.patch_size)

    def decode(self, tokens: Tensor) -> Tensor:
        z = unpatchify(tokens, self.patch_size, self.latent_channels) / self.latent_scale
        if self.autoencoder is not None:
            z = self.autoencoder.decode(z)
        return z.clamp(-1, 1)

    def check_batch(self, batch: Any) -> tuple[Tensor, Tensor]:
        if not isinstance(batch, dict) or "images" not in batch or "labels" not in batch:
            raise ConfigError("an xar batch is a dict with 'images' [B, C, H, W] in [-1, 1] and 'labels' [B]; "
                              f"got {type(batch).__name__} with keys {list(batch) if isinstance(batch, dict) else '-'}")
        images, labels = batch["images"], batch["labels"]
        expected = (self.channels, self.image_size, self.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ConfigError(f"images have shape {tuple(images.shape)} but this model takes [B, {expected[0]}, "
                              f"{expected[1]}, {expected[2]}]; resize the data (XARDataModule image_size=...) or "
                              "build the model with matching image_size / channels")
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ConfigError(f"labels must be in [0, {self.num_classes - 1}]; got {labels.min().item()}.."
                              f"{labels.max().item()} (set num_classes to the dataset's class count)")
        return images, labels.long()

    # ------------------------------------------------------------------ objective
    def flow_matching_loss(self, batch: dict, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        images, labels = self.check_batch(batch)
        net = self.net
        x = net.to_sequence(self.encode(images))  # [B, L, D] entity-major
        b, n = x.shape[0], net.num_entities
        dev = x.device
        if self.training and self.label_drop > 0:  # label dropout: the null class trains the CFG branch
            drop = torch.rand(b, device=dev, generator=generator) < self.label_drop
            labels = torch.where(drop, torch.full_like(labels, net.null_class), labels)
        # one t per entity, logit-normal (upstream draws logit-normal(0, 1))
        t = torch.sigmoid(self.t_logit_mean + self.t_logit_std * torch.randn(b, n, device=dev, generator=generator))
        eps = torch.randn(x.shape, device=dev, generator=generator)
        t_tok = t[:, net.entity_ids, None]
        noisy = (1 - t_tok) * x + t_tok * eps  # F_n = (1 - t_n) X_n + t_n eps_n
        target = eps - x  # V_n = eps_n - X_n
        if self.context == "noisy":  # NCL: entity n is predicted from the NOISY entities 1..n
            v = net(noisy, net.condition(labels, t), net.full_view())
        else:  # teacher forcing: clean context at t=0 in a second stream
            cond = net.condition(labels, torch.cat([torch.zeros_like(t), t], dim=1))
            v = net(torch.cat([x, noisy], dim=1), cond, net.two_stream_view())[:, x.shape[1]:]
        # xAR Eq. (flow matching per entity): L = sum_n || f(F_1..F_n, t_n) - (eps_n - X_n) ||^2
        loss = F.mse_loss(v, target)
        return {"loss": loss, "velocity": v, "target": target}

    def forward(self, batch: dict) -> dict[str, Tensor]:
        # eval mode draws t and eps from a fixed seed so outputs are reproducible
        generator = None if self.training else torch.Generator(device=self.device).manual_seed(0)
        return self.flow_matching_loss(batch, generator)

    def training_step(self, batch, batch_idx):
        loss = self.flow_matching_loss(batch)["loss"]
        self.log_metrics("train", {"loss": loss})
        return loss

    def validation_step(self, batch, batch_idx):
        generator = torch.Generator(device=self.device).manual_seed(batch_idx)
        loss = self.flow_matching_loss(batch, generator)["loss"]
        self.log_metrics("val", {"loss": loss}, batch_size=len(batch["labels"]))

    def on_validation_epoch_end(self) -> None:
        if self.eval_samples and not self.trainer.sanity_checking:
            scores = self.sample_quality(self.eval_samples)
            self.log_metrics("val", {k: scores[k] for k in ("feature_fd", "class_accuracy", "precision", "recall")})

    def sample_quality(self, num_samples: int = 1000, seed: int = 0) -> dict[str, float]:
        """Feature-space FD, class accuracy and k-NN precision/recall of ``num_samples`` generated digits
        against the digits training split, in the frozen shipped classifier's feature space."""
        from zoo.models.xar.data import XARDataModule
        from zoo.models.xar.metrics import SampleQuality

        if self._quality is None:
            data = XARDataModule(batch_size=512)
            data.setup()
            self._quality = SampleQuality(torch.cat([b["images"] for b in data.train_dataloader()]))
        labels = torch.arange(num_samples) % self.num_classes
        images = torch.cat([self.generate(chunk, seed=seed + i).cpu() for i, chunk in enumerate(labels.split(500))])
        return self._quality.score(images, labels)

    def test_step(self, batch, batch_idx):
        generator = torch.Generator(device=self.device).manual_seed(batch_idx)
        loss = self.flow_matching_loss(batch, generator)["loss"]
        self.log_metrics("test", {"loss": loss}, batch_size=len(batch["labels"]))

    def example_batch(self, batch_size: int = 2) -> dict[str, Tensor]:
        g = torch.Generator().manual_seed(0)
        images = torch.rand(batch_size, self.channels, self.image_size, self.image_size, generator=g) * 2 - 1
        return {"images": images, "labels": torch.arange(batch_size) % self.num_classes}

    # ------------------------------------------------------------------ EMA and schedule
    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.ema is None:
            return
        # warm-up of the decay so short runs are not dominated by the random init
        step = self.global_step
        decay = min(self.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(self.ema.parameters(), self.net.parameters()):
                e.lerp_(p.detach(), 1 - decay)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.autoencoder is not None and self.autoencoder_weights:
            load_autoencoder_weights(self.autoencoder, self.autoencoder_weights)

    def configure_optimizers(self):
        config = super().configure_optimizers()
        if self.lr_hold > 0:
            total = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 1
            optimizer = config["optimizer"]
            for group in optimizer.param_groups:
                group["lr"] = group.get("initial_lr", group["lr"])
            config["lr_scheduler"]["scheduler"] = torch.optim.lr_scheduler.LambdaLR(
                optimizer, hold_then_cosine(self.optim, total, self.lr_hold))
        return config

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, class_labels: Tensor | list[int], num_steps: int | None = None, cfg_scale: float | None = None,
                 solver: Literal["sde", "ode"] | None = None, seed: int | None = None, use_ema: bool = True) -> Tensor:
        """Images [B, C, H, W] in [-1, 1], one AR step per entity (KV-cached), each solved from noise."""
        labels = torch.as_tensor(class_labels, dtype=torch.long, device=self.device).reshape(-1)
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ConfigError(f"class_labels must be in [0, {self.num_classes - 1}]; got "
                              f"{labels.min().item()}..{labels.max().item()}")
        net = self.ema if (use_ema and self.ema is not None) else self.net
        was_training = net.training
        net.eval()
        generator = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
        tokens = sample_sequence(net, labels, num_steps or self.sample_steps,
                                 self.cfg_scale if cfg_scale is None else cfg_scale, solver or self.solver, generator)
        net.train(was_training)
        return self.decode(tokens)


class XARAutoencoderModule(ZooModule):
    """The family's KL autoencoder, trained on its own before xAR runs on its latents.

    Loss: reconstruction MSE + ``kl_weight`` * KL(q(z|x) || N(0, I)) (the VAE ELBO with a small KL
    weight, as LDM/MAR's KL autoencoders; their perceptual and GAN terms are left out at digit scale).
    """

    family = "xar"
    pipeline_tag = "image-to-image"

    def __init__(self, autoencoder: AutoencoderConfig | None = None, kl_weight: float = 1e-4,
                 optim: OptimConfig | None = None):
        super().__init__(optim=optim)
        self.config = AutoencoderConfig.coerce(autoencoder)
        self.kl_weight = kl_weight
        self.autoencoder = KLAutoencoder(self.config)

    def forward(self, batch: dict) -> dict[str, Tensor]:
        images = batch["images"]
        expected = (self.config.in_channels, self.config.resolution, self.config.resolution)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ConfigError(f"images have shape {tuple(images.shape)}; this autoencoder takes [B, {expected[0]}, "
                              f"{expected[1]}, {expected[2]}] (set autoencoder.in_channels / resolution)")
        posterior = self.autoencoder.encode(images)
        # eval mode decodes the posterior mean, so outputs are deterministic
        z = posterior.sample() if self.training else posterior.mode()
        recon = self.autoencoder.decode(z)
        mse = F.mse_loss(recon, images)
        kl = posterior.kl().mean()
        # VAE ELBO (Kingma & Welling, Eq. 3) with a down-weighted KL term
        return {"loss": mse + self.kl_weight * kl, "mse": mse, "kl": kl, "reconstruction": recon}

    def training_step(self, batch, batch_idx):
        out = self(batch)
        self.log_metrics("train", {"loss": out["loss"], "mse": out["mse"], "kl": out["kl"]})
        return out["loss"]

    def validation_step(self, batch, batch_idx):
        out = self(batch)
        self.log_metrics("val", {"loss": out["loss"], "mse": out["mse"]}, batch_size=len(batch["images"]))

    def example_batch(self, batch_size: int = 2) -> dict[str, Tensor]:
        g = torch.Generator().manual_seed(0)
        size = (batch_size, self.config.in_channels, self.config.resolution, self.config.resolution)
        return {"images": torch.rand(size, generator=g) * 2 - 1, "labels": torch.zeros(batch_size, dtype=torch.long)}
