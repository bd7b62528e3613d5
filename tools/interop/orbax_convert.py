"""Orbax checkpoints of Flax NNX models to and from nnx-cpp's names: the one place where the
layer mapping between the two is declared (run by nnx-ckpt import-orbax with a Python that has
orbax-checkpoint, e.g. tools/setup-interop.sh's .venv-interop).

  orbax_convert.py from-safetensors IN.safetensors ORBAX_DIR STEP
      the other way: IN (model/..., opt/... as to-safetensors writes them, from nnx-cpp) becomes
      step STEP of an Orbax CheckpointManager directory: Composite(model=..., optimizer=...) as
      nnx.state(model) and nnx.state(nnx.Optimizer(model, optax.adamw(...))) save them, which
      StandardRestore(nnx.state(abstract)) restores. Kernels go back to Flax's layouts.
  orbax_convert.py to-safetensors ORBAX_DIR STEP OUT.safetensors
      reads step STEP (or the latest, when STEP is "latest") of an Orbax CheckpointManager
      directory written from a Flax NNX model: a single StandardSave item of nnx.state(model), or
      a Composite of that and nnx.state(nnx.Optimizer(model, optax.adam/adamw)). Writes the
      tensors under nnx-cpp's names, and prints the step.

The mapping (Flax NNX -> nnx-cpp):
  model state  <path>/value                   -> model/<path>   (Param and BatchStat alike: the
                                                 nnx-cpp model says which kind a path is)
  Conv kernels [kh, kw, in, out] (HWIO)       -> [out, in, kh, kw] (OIHW, PyTorch's layout)
  Linear kernels [in, out], BatchNorm scale/bias/mean/var, LayerNorm scale/bias, Embed
  embedding                                   -> unchanged, same names
  optax adam/adamw state (ScaleByAdamState):
    mu/<path>/value, nu/<path>/value          -> opt/mu/<path>, opt/nu/<path> (kernels as above)
    count                                     -> opt/count (the step)
  nnx.Optimizer's step, RNG keys and counts   -> not carried (nnx-cpp's Rngs are key/count
                                                 streams; JAX's typed keys do not map onto them)
Paths are the Flax module's attribute paths joined with '/': name the Flax modules as the
nnx-cpp model's paths (`nnx-ckpt show` lists them), e.g. nnx.Dict({"1": nnx.Linear(...)}) for
nnx-cpp's layers/1.
"""
import os
import sys

import numpy as np


def _is_rng_stream(tree):
    """An nnx.RngStream's state: a typed PRNG key and its count (not carried to nnx-cpp)."""
    if not (isinstance(tree, dict) and {"key", "count"} <= set(tree)):
        return False
    key = tree["key"]["value"] if isinstance(tree["key"], dict) else tree["key"]
    import jax
    return hasattr(key, "dtype") and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)


def _leaves(tree, prefix=()):
    """(path tuple, array) of every array leaf of a restored pytree of dicts/lists."""
    if _is_rng_stream(tree):
        return
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _leaves(v, prefix + (str(k),))
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from _leaves(v, prefix + (str(i),))
    elif tree is not None:
        yield prefix, np.asarray(tree)


def _strip_value(path):
    return path[:-1] if path and path[-1] == "value" else path


def _to_nnx_layout(path, array):
    if path and path[-1] == "kernel" and array.ndim == 4:  # HWIO -> OIHW
        return np.ascontiguousarray(array.transpose(3, 2, 0, 1))
    return np.ascontiguousarray(array)


def _adam_state(tree):
    """The dict holding count, mu and nu (optax's ScaleByAdamState) inside an optimizer state."""
    if isinstance(tree, dict):
        if {"count", "mu", "nu"} <= set(tree):
            return tree
        for v in tree.values():
            found = _adam_state(v)
            if found is not None:
                return found
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            found = _adam_state(v)
            if found is not None:
                return found
    return None


def to_safetensors(directory, step, out):
    import absl.logging
    import orbax.checkpoint as ocp
    import safetensors.numpy

    absl.logging.set_verbosity(absl.logging.ERROR)  # read-only option notices
    directory = os.path.abspath(directory)  # tensorstore wants absolute paths
    with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(read_only=True)) as mngr:
        steps = mngr.all_steps()
        if not steps:
            sys.exit(f"{directory}: no Orbax checkpoint steps")
        step = max(steps) if step == "latest" else int(step)
        if step not in steps:
            sys.exit(f"{directory}: no step {step} (steps: {sorted(steps)})")
        # Every item of the step, restored as the arrays it holds (no target: no model needed).
        step_dir = os.path.join(directory, str(step))
        items = sorted(d for d in os.listdir(step_dir) if os.path.isfile(os.path.join(step_dir, d, "_METADATA")))
        if not items:
            sys.exit(f"{step_dir}: no Orbax StandardSave items (folders with _METADATA)")
        if items == ["default"]:  # a single, unnamed StandardSave item
            restored = {"default": mngr.restore(step, args=ocp.args.StandardRestore())}
        else:
            restored = dict(mngr.restore(step, args=ocp.args.Composite(**{i: ocp.args.StandardRestore() for i in items})))
    tensors, model_items, opt_items = {}, [], []
    for name, tree in restored.items():
        (opt_items if _adam_state(tree) is not None else model_items).append(name)
    if len(model_items) != 1 or len(opt_items) > 1:
        sys.exit(f"{directory}/{step}: expected one model item and at most one optimizer item, found "
                 f"model items {model_items} and optimizer items {opt_items}")
    for path, array in _leaves(restored[model_items[0]]):
        path = _strip_value(path)
        tensors["model/" + "/".join(path)] = _to_nnx_layout(path, array)
    if opt_items:
        adam = _adam_state(restored[opt_items[0]])
        for moment in ("mu", "nu"):
            for path, array in _leaves(adam[moment]):
                path = _strip_value(path)
                tensors[f"opt/{moment}/" + "/".join(path)] = _to_nnx_layout(path, array)
        count = adam["count"]["value"] if isinstance(adam["count"], dict) else adam["count"]
        tensors["opt/count"] = np.asarray(count, dtype=np.int64).reshape(())
    safetensors.numpy.save_file(tensors, out, metadata={"orbax_step": str(step), "model_item": model_items[0],
                                                        "optimizer_item": opt_items[0] if opt_items else ""})
    print(step)


def _to_flax_layout(path, array):
    if path and path[-1] == "kernel" and array.ndim == 4:  # OIHW -> HWIO
        return np.ascontiguousarray(array.transpose(2, 3, 1, 0))
    return array


def _nest(flat):
    """{"a/b/c": x} -> {"a": {"b": {"c": {"value": x}}}}: how nnx.State's Variables save."""
    tree = {}
    for name, array in flat.items():
        parts = name.split("/")
        node = tree
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = {"value": _to_flax_layout(parts, array)}
    return tree


def from_safetensors(path, directory, step):
    import absl.logging
    import orbax.checkpoint as ocp
    import safetensors.numpy

    absl.logging.set_verbosity(absl.logging.ERROR)
    flat = safetensors.numpy.load_file(path)
    model = _nest({k[len("model/"):]: v for k, v in flat.items() if k.startswith("model/")})
    if not model:
        sys.exit(f"{path}: no model/... tensors (expected what nnx-ckpt export-orbax writes)")
    items = {"model": ocp.args.StandardSave(model)}
    if "opt/count" in flat:
        count = flat["opt/count"].astype(np.int32)
        adam = {"count": {"value": count},
                "mu": _nest({k[len("opt/mu/"):]: v for k, v in flat.items() if k.startswith("opt/mu/")}),
                "nu": _nest({k[len("opt/nu/"):]: v for k, v in flat.items() if k.startswith("opt/nu/")})}
        # nnx.Optimizer(model, optax.adamw(...)): the chain's first state is scale_by_adam's.
        items["optimizer"] = ocp.args.StandardSave({"opt_state": {"0": adam}, "step": {"value": count.astype(np.uint32)}})
    directory = os.path.abspath(directory)
    with ocp.CheckpointManager(directory) as mngr:
        if int(step) in mngr.all_steps():  # Orbax's save would skip it silently
            sys.exit(f"{directory}: step {step} exists; a checkpoint is never overwritten")
        if not mngr.save(int(step), args=ocp.args.Composite(**items)):
            sys.exit(f"{directory}: Orbax did not save step {step} (a newer step exists there)")
        mngr.wait_until_finished()
    print(f"{directory}/{int(step)}: {len(flat)} tensors")


if __name__ == "__main__":
    commands = {"to-safetensors": to_safetensors, "from-safetensors": from_safetensors}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit(__doc__)
    commands[sys.argv[1]](*sys.argv[2:])
