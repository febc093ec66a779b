"""Tokenizer training as a generic-loop task: init, loss_fn and a reconstruction preview.

Params are ``{"model": tokenizer params}`` plus ``"disc"`` when the GAN is on; one optimizer
trains both: the generator terms see the discriminator through ``stop_gradient`` and the
discriminator loss sees the reconstructions through ``stop_gradient``. Non-trainable
collections (EMA codebook statistics in ``vq_stats``) are the ``model_state``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxar.data.transforms import to_uint8
from jaxar.task import Task
from jaxar.tokenizers import losses as L
from jaxar.tokenizers.autoencoder import Tokenizer, TokenizerConfig, apply_conv_out
from jaxar.tokenizers.discriminator import PatchDiscriminator
from jaxar.tokenizers.lpips import LPIPS, load_lpips_params


def make_tokenizer_task(
    tokenizer_cfg: TokenizerConfig,
    loss_cfg: L.LossConfig,
    image_shape: tuple[int, int, int],
    lpips_params: dict | None = None,
    preview_images: np.ndarray | None = None,
) -> Task:
    """Builds the task. ``image_shape`` = (H, W, C). LPIPS weights come from ``lpips_params``
    or ``loss_cfg.lpips_path`` (required when ``perceptual_weight > 0``). With
    ``preview_images`` [N, H, W, C], ``sample_images`` returns uint8 [2N, H, W, C]: the images
    followed by their reconstructions (None for an EMA codebook, which lives in model_state
    that ``sample_images(params, rng)`` does not receive)."""
    height, width, channels = image_shape
    if channels != tokenizer_cfg.image_channels:
        raise ValueError(
            f"image_shape has {channels} channels, tokenizer expects {tokenizer_cfg.image_channels}"
        )
    tokenizer_cfg.code_shape(height)
    tokenizer_cfg.code_shape(width)
    model = Tokenizer(tokenizer_cfg)
    disc = PatchDiscriminator(loss_cfg.disc_channels, loss_cfg.disc_layers)
    if loss_cfg.perceptual_weight > 0 and lpips_params is None:
        if loss_cfg.lpips_path is None:
            raise ValueError("perceptual_weight > 0 needs lpips_params or loss_cfg.lpips_path")
        lpips_params = load_lpips_params(loss_cfg.lpips_path)

    def init(rng: jax.Array, batch: dict) -> tuple[dict, dict]:
        images = jnp.asarray(batch["image"])
        k_model, k_quant, k_disc = jax.random.split(rng, 3)
        variables = dict(model.init({"params": k_model, "quantizer": k_quant}, images))
        params = {"model": variables.pop("params")}
        if loss_cfg.use_gan:
            params["disc"] = disc.init(k_disc, images)["params"]
        return params, variables

    def nll(images: jax.Array, recon: jax.Array) -> tuple[jax.Array, dict]:
        rec = L.reconstruction_loss(images, recon, loss_cfg.recon_loss)
        total, metrics = loss_cfg.recon_weight * rec, {"recon_loss": rec}
        if loss_cfg.perceptual_weight > 0:
            p = jnp.mean(LPIPS().apply({"params": lpips_params}, images, recon))
            total, metrics["perceptual_loss"] = total + loss_cfg.perceptual_weight * p, p
        return total, metrics

    def loss_fn(params, model_state, batch, rng, step):
        images = jnp.asarray(batch["image"], jnp.float32)
        k_quant, k_drop = jax.random.split(rng)
        variables = {"params": params["model"], **model_state}
        rngs = {"quantizer": k_quant, "dropout": k_drop}
        forward = dict(train=True, method=Tokenizer.forward_features, rngs=rngs)
        if model_state:
            (features, qout), new_state = model.apply(
                variables, images, mutable=list(model_state), **forward
            )
        else:
            (features, qout), new_state = model.apply(variables, images, **forward), {}
        last = params["model"]["decoder"]["conv_out"]
        recon = apply_conv_out(features, last["kernel"], last["bias"])
        nll_loss, metrics = nll(images, recon)
        loss = nll_loss + loss_cfg.codebook_weight * qout.loss
        if loss_cfg.use_gan:
            gan_loss, gan_metrics = _gan_terms(params, images, recon, features, last, step)
            loss, metrics = loss + gan_loss, {**metrics, **gan_metrics}
        metrics.update(L.quantizer_terms(qout.losses))
        metrics.update(
            {"quant/loss": qout.loss, **{f"quant/{k}": v for k, v in qout.stats.items()}}
        )
        metrics["loss"] = loss
        return loss, (metrics, dict(new_state))

    def _gan_terms(params, images, recon, features, last, step):
        disc_frozen = jax.lax.stop_gradient(params["disc"])
        gen_adv = L.GEN_LOSSES[loss_cfg.gen_loss](disc.apply({"params": disc_frozen}, recon))
        weight = L.disc_weight_at(step, loss_cfg.disc_start, loss_cfg.disc_weight)
        adaptive = jnp.ones((), jnp.float32)
        if loss_cfg.adaptive_weight:
            feats, bias = jax.lax.stop_gradient(features), jax.lax.stop_gradient(last["bias"])
            out = lambda k: apply_conv_out(feats, k, bias)
            nll_grads = jax.grad(lambda k: nll(images, out(k))[0])(last["kernel"])
            gan_grads = jax.grad(
                lambda k: L.GEN_LOSSES[loss_cfg.gen_loss](
                    disc.apply({"params": disc_frozen}, out(k))
                )
            )(last["kernel"])
            adaptive = L.adaptive_gan_weight(nll_grads, gan_grads)
        logits_real = disc.apply({"params": params["disc"]}, images)
        logits_fake = disc.apply({"params": params["disc"]}, jax.lax.stop_gradient(recon))
        disc_loss = weight * L.DISC_LOSSES[loss_cfg.disc_loss](logits_real, logits_fake)
        metrics = {
            "gen_adv_loss": gen_adv, "disc_loss": disc_loss, "adaptive_weight": adaptive,
            "disc_weight": weight, "logits_real": jnp.mean(logits_real),
            "logits_fake": jnp.mean(logits_fake),
        }  # fmt: skip
        return adaptive * weight * gen_adv + disc_loss, metrics

    sample_images = None
    ema_codebook = tokenizer_cfg.quantizer == "vq" and tokenizer_cfg.use_ema
    if preview_images is not None and not ema_codebook:  # an EMA codebook lives in model_state
        preview = jnp.asarray(preview_images, jnp.float32)

        def sample_images(params, rng):
            del rng
            recon, _ = model.apply({"params": params["model"]}, preview, train=False)
            return np.asarray(to_uint8(jnp.concatenate([preview, recon], axis=0)))

    return Task(name="tokenizer", init=init, loss_fn=loss_fn, sample_images=sample_images)
