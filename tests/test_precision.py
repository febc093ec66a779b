"""bfloat16 sampling keeps a trained model's choices: a small GPT fitted on class-determined
code sequences gives the same greedy codes in bfloat16 (weights, activations, KV cache) as in
float32 on >= 99% of tokens, and both reproduce what it was trained on."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxar.generators.gpt import GPT, gpt_config
from jaxar.sampling.autoregressive import make_sampler

CLASSES, VOCAB, LENGTH = 10, 64, 16


def _targets(labels):
    """Class c's sequence: code t = (7 c + 5 t + t^2) mod VOCAB (distinct per class)."""
    t = np.arange(LENGTH)
    return (7 * labels[:, None] + 5 * t + t * t) % VOCAB


def test_bfloat16_greedy_codes_agree_with_float32_on_a_trained_model():
    cfg = gpt_config(
        "GPT-tiny", vocab_size=VOCAB, block_size=LENGTH, num_classes=CLASSES, class_dropout_prob=0.0
    )
    model = GPT(cfg)
    labels = np.arange(CLASSES, dtype=np.int32)
    codes = jnp.asarray(_targets(labels), jnp.int32)
    params = model.init(jax.random.key(0), codes, labels)["params"]
    opt = optax.adam(3e-3)
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        def loss(p):
            logits = model.apply({"params": p}, codes, labels)
            return optax.softmax_cross_entropy_with_integer_labels(logits, codes).mean()

        value, grads = jax.value_and_grad(loss)(params)
        updates, state = opt.update(grads, state)
        return optax.apply_updates(params, updates), state, value

    for _ in range(300):
        params, state, loss = step(params, state)
    assert float(loss) < 0.05, float(loss)

    batch = np.tile(labels, 4)
    fp32 = make_sampler(cfg, temperature=0.0)(params, batch, jax.random.key(1))
    bf16_sampler = make_sampler(cfg, temperature=0.0, precision="bfloat16")
    bf16 = bf16_sampler(params, batch, jax.random.key(1))
    np.testing.assert_array_equal(fp32, _targets(batch))
    assert (np.asarray(bf16) == np.asarray(fp32)).mean() >= 0.99
    assert jax.tree.leaves(params)[0].dtype == jnp.float32  # the caller's params stay float32
    # a guided, sampled draw in bfloat16 stays on the trained sequences too
    guided = make_sampler(cfg, cfg_scale=2.0, top_k=4, precision="bfloat16")
    drawn = guided(params, batch, jax.random.key(2))
    assert (np.asarray(drawn) == _targets(batch)).mean() >= 0.95
