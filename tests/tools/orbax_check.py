"""The JAX side of the Orbax interop tests (.venv-interop's python).

  train-save KIND ORBAX_DIR OUT.safetensors
      KIND mlp or cnn: a Flax NNX model in the shapes of nnx-cpp's (its modules named as
      nnx-cpp's paths), trained 5 steps with nnx.Optimizer(optax.adamw) and saved by Orbax's
      CheckpointManager at step 5 as Composite(model=nnx.state(model), optimizer=nnx.state(opt)).
      OUT gets what the C++ side compares against: logits of the saved model on x_eval (eval
      mode), and the params after one more AdamW step on (x_step, y_step), in nnx-cpp's layouts.
  save-model KIND ORBAX_DIR
      the model alone, untrained, as Orbax's single StandardSave item at step 3
  restore KIND ORBAX_DIR STEP IN.safetensors OUT.safetensors
      the seed's restore workflow on an Orbax checkpoint nnx-ckpt export-orbax wrote: nnx.eval_shape,
      nnx.split, StandardRestore into the abstract model's and optimizer's state, nnx.merge; OUT
      gets the model's logits (eval mode) on IN's x and the optimizer's step.
"""
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx

LR, WD = 1e-3, 0.01


class MLP(nnx.Module):
    """nnx-cpp's MLP(in_features=16, hidden=[32], num_classes=4, dropout=0): layers/1, layers/3."""

    def __init__(self, rngs):
        self.layers = nnx.Dict({"1": nnx.Linear(16, 32, rngs=rngs), "3": nnx.Linear(32, 4, rngs=rngs)})

    def __call__(self, x):
        return self.layers["3"](jax.nn.relu(self.layers["1"](x.reshape(x.shape[0], -1))))


class CNN(nnx.Module):
    """nnx-cpp's CNN(in_channels=1, image_size=28, channels=[4, 8], hidden=16, num_classes=10,
    dropout=0): conv, BatchNorm, ReLU, max pool (twice), flatten in NCHW order, dense, ReLU,
    dense. Inputs are NCHW, as nnx-cpp's are; BatchNorm momentum 0.9 is PyTorch's 0.1."""

    def __init__(self, rngs):
        conv = lambda i, o: nnx.Conv(i, o, kernel_size=(3, 3), padding=((1, 1), (1, 1)), rngs=rngs)
        bn = lambda c: nnx.BatchNorm(c, momentum=0.9, epsilon=1e-5, rngs=rngs)
        self.layers = nnx.Dict({"0": conv(1, 4), "1": bn(4), "4": conv(4, 8), "5": bn(8),
                                "9": nnx.Linear(8 * 7 * 7, 16, rngs=rngs), "11": nnx.Linear(16, 10, rngs=rngs)})

    def __call__(self, x):
        h = x.transpose(0, 2, 3, 1)  # NCHW -> NHWC
        for conv, bn in (("0", "1"), ("4", "5")):
            h = nnx.max_pool(jax.nn.relu(self.layers[bn](self.layers[conv](h))), (2, 2), strides=(2, 2))
        h = h.transpose(0, 3, 1, 2).reshape(h.shape[0], -1)  # flatten as nnx-cpp does (C, H, W)
        return self.layers["11"](jax.nn.relu(self.layers["9"](h)))


def batch(kind, rng, n):
    if kind == "mlp":
        return rng.standard_normal((n, 16)).astype(np.float32), rng.integers(0, 4, n).astype(np.int32)
    return rng.standard_normal((n, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, n).astype(np.int32)


def nnx_layout(path, value):
    value = np.asarray(value)
    return value.transpose(3, 2, 0, 1).copy() if path[-1] == "kernel" and value.ndim == 4 else value


def train_save(kind, orbax_dir, out):
    import safetensors.numpy

    model = (MLP if kind == "mlp" else CNN)(nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adamw(LR, b1=0.9, b2=0.999, eps=1e-8, weight_decay=WD), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, x, y):
        loss = lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
        grads = nnx.grad(loss)(model)
        opt.update(model, grads)

    rng = np.random.default_rng(1)
    model.train()
    for _ in range(5):
        step(model, opt, *batch(kind, rng, 8))
    with ocp.CheckpointManager(orbax_dir, options=ocp.CheckpointManagerOptions(max_to_keep=2)) as mngr:
        mngr.save(5, args=ocp.args.Composite(model=ocp.args.StandardSave(nnx.state(model)),
                                             optimizer=ocp.args.StandardSave(nnx.state(opt))))
        mngr.wait_until_finished()
    x_eval, _ = batch(kind, rng, 6)
    model.eval()
    logits = np.asarray(model(jnp.asarray(x_eval)))
    x_step, y_step = batch(kind, rng, 8)
    model.train()
    step(model, opt, x_step, y_step)
    result = {"x_eval": x_eval, "logits_eval": logits, "x_step": x_step, "y_step": y_step.astype(np.int64)}
    for path, value in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        result["params_after/" + "/".join(str(p) for p in path)] = nnx_layout(path, value.get_value())
    safetensors.numpy.save_file(result, out)
    print(f"{kind}: trained 5 steps, saved step 5 to {orbax_dir}; {len(result)} tensors to {out}")


def save_model(kind, orbax_dir):
    model = (MLP if kind == "mlp" else CNN)(nnx.Rngs(0))
    with ocp.CheckpointManager(orbax_dir) as mngr:
        mngr.save(3, args=ocp.args.StandardSave(nnx.state(model)))
        mngr.wait_until_finished()
    print(f"{kind}: saved the model alone at step 3 of {orbax_dir}")


def restore(kind, orbax_dir, step, inputs, out):
    import safetensors.numpy

    make = MLP if kind == "mlp" else CNN
    abstract = nnx.eval_shape(lambda: make(nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract)
    abstract_opt = nnx.eval_shape(lambda: nnx.Optimizer(make(nnx.Rngs(0)), optax.adamw(LR, weight_decay=WD), wrt=nnx.Param))
    with ocp.CheckpointManager(orbax_dir) as mngr:
        restored = mngr.restore(int(step), args=ocp.args.Composite(
            model=ocp.args.StandardRestore(abstract_state), optimizer=ocp.args.StandardRestore(nnx.state(abstract_opt))))
    model = nnx.merge(graphdef, restored["model"])
    model.eval()
    x = safetensors.numpy.load_file(inputs)["x"]
    count = restored["optimizer"]["opt_state"][0]["count"].get_value()
    safetensors.numpy.save_file({"logits": np.asarray(model(jnp.asarray(x))), "count": np.asarray(count, np.int64)}, out)
    print(f"{kind}: restored step {step} into a Flax NNX model and nnx.Optimizer")


if __name__ == "__main__":
    {"train-save": train_save, "save-model": save_model, "restore": restore}[sys.argv[1]](*sys.argv[2:])
