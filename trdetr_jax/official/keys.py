"""The official ``state_dict`` key <-> Flax param path table, both ways.

One explicit key table (:func:`key_table`) maps every official ``state_dict`` key to the
Flax param path(s) it becomes, with the transform:

=============  ==========================================  ===============================
kind           official tensor                             Flax leaf
=============  ==========================================  ===============================
``linear``     Linear ``weight`` (out, in)                 Dense ``kernel`` (in, out) = W.T
``vector``     bias / LayerNorm ``weight`` (-> ``scale``)  same values
``conv1``      Conv1d kernel-1 ``weight`` (out, in, 1)     Dense ``kernel`` (in, out)
``column``     ``w4C``, ``w4Q``, pooling weight (d, 1)     vector (d,)
``row3``       ``w4mlu`` (1, 1, d)                         vector (d,)
``scalar``     PReLU ``weight`` (1,)                       scalar ()
``table``      Embedding ``weight``                        same array
=============  ==========================================  ===============================

Packed tensors are split by rows: ``in_proj_weight``/``in_proj_bias`` [q; k; v] into the
``q_proj``/``k_proj``/``v_proj`` Dense layers, and the GRU's ``weight_ih_l0``/``weight_hh_l0``/
``bias_*`` by gate (r, z, n) into ``ir iz in`` / ``hr hz hn``.

``params_to_state_dict`` inverts the table and works on any pytree with the params'
structure, e.g. a gradient, so gradients can be compared with official ones by key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Entry:
    """One official tensor: its key, its kind, and the Flax leaves (with row ranges) it fills."""

    key: str
    kind: str
    parts: tuple[tuple[Path, int, int], ...]  # (flax path, first row, number of rows); rows=-1: all


def _dense(key: str, path: Path) -> Iterator[Entry]:
    yield Entry(f"{key}.weight", "linear", ((path + ("kernel",), 0, -1),))
    yield Entry(f"{key}.bias", "vector", ((path + ("bias",), 0, -1),))


def _norm(key: str, path: Path) -> Iterator[Entry]:
    yield Entry(f"{key}.weight", "vector", ((path + ("scale",), 0, -1),))
    yield Entry(f"{key}.bias", "vector", ((path + ("bias",), 0, -1),))


def _packed(key: str, kind: str, paths: list[Path], leaf: str, rows: int) -> Entry:
    return Entry(key, kind, tuple((p + (leaf,), i * rows, rows) for i, p in enumerate(paths)))


def _mlp(key: str, path: Path, num_layers: int) -> Iterator[Entry]:
    for i in range(num_layers):
        yield from _dense(f"{key}.layers.{i}", path + (f"layer_{i}",))


def _torch_mha(key: str, path: Path, d: int) -> Iterator[Entry]:
    qkv = [path + (n,) for n in ("q_proj", "k_proj", "v_proj")]
    yield _packed(f"{key}.in_proj_weight", "linear", qkv, "kernel", d)
    yield _packed(f"{key}.in_proj_bias", "vector", qkv, "bias", d)
    yield from _dense(f"{key}.out_proj", path + ("out_proj",))


def _ffn_and_norms(key: str, path: Path, norms: tuple[str, ...]) -> Iterator[Entry]:
    yield from _dense(f"{key}.linear1", path + ("linear1",))
    yield from _dense(f"{key}.linear2", path + ("linear2",))
    for n in norms:
        yield from _norm(f"{key}.{n}", path + (n,))
    yield Entry(f"{key}.activation.weight", "scalar", ((path + ("activation", "alpha"), 0, -1),))


def key_table(
    *,
    hidden_dim: int,
    enc_layers: int,
    dec_layers: int,
    n_input_proj: int,
    use_vfr: bool = True,
    use_mr2hd: bool = True,
    **_: Any,
) -> list[Entry]:
    """Every official state_dict key of a TR-DETR with these sizes, in a fixed order.

    The official model always has the fuser and GRU; our ablated models (``use_vfr`` /
    ``use_mr2hd`` off) have no such params, and their keys are left out.
    """
    d = hidden_dim
    t: list[Entry] = []
    for i in range(enc_layers):
        for stack in ("t2v_encoder", "encoder"):
            key, path = f"transformer.{stack}.layers.{i}", (stack, f"layer_{i}")
            t += _torch_mha(f"{key}.self_attn", path + ("self_attn",), d)
            t += _ffn_and_norms(key, path, ("norm1", "norm2"))
    for i in range(dec_layers):
        key, path = f"transformer.decoder.layers.{i}", ("decoder", f"layer_{i}")
        projs = ["sa_qcontent_proj", "sa_qpos_proj", "sa_kcontent_proj", "sa_kpos_proj"]
        projs += ["sa_v_proj", "ca_qcontent_proj", "ca_kcontent_proj", "ca_kpos_proj"]
        projs += ["ca_v_proj", "ca_qpos_sine_proj"] + (["ca_qpos_proj"] if i == 0 else [])
        for p in projs:
            t += _dense(f"{key}.{p}", path + (p,))
        t += _dense(f"{key}.self_attn.out_proj", path + ("self_attn", "out_proj"))
        t += _dense(f"{key}.cross_attn.out_proj", path + ("cross_attn", "out_proj"))
        t += _ffn_and_norms(key, path, ("norm1", "norm2", "norm3"))
    t += _norm("transformer.decoder.norm", ("decoder", "norm"))
    t += _mlp("transformer.decoder.query_scale", ("decoder", "query_scale"), 2)
    t += _mlp("transformer.decoder.ref_point_head", ("decoder", "ref_point_head"), 2)
    t += _mlp("transformer.decoder.bbox_embed", ("decoder", "bbox_embed"), 3)
    t += _mlp("transformer.decoder.ref_anchor_head", ("decoder", "ref_anchor_head"), 2)
    tp = ("txt_position_embed",)
    t.append(Entry("txt_position_embed.position_embeddings.weight", "table",
                   ((tp + ("position_embeddings",), 0, -1),)))  # fmt: skip
    t += _norm("txt_position_embed.LayerNorm", tp + ("norm",))
    t += _mlp("span_embed", ("span_embed",), 3)
    t += _dense("class_embed", ("class_embed",))
    t.append(Entry("query_embed.weight", "table", ((("query_embed",), 0, -1),)))
    for name in ("input_txt_proj", "input_vid_proj"):
        for i in range(n_input_proj):
            t += _norm(f"{name}.{i}.LayerNorm", (name, f"layer_{i}_norm"))
            t += _dense(f"{name}.{i}.net.1", (name, f"layer_{i}_dense"))
    t += _dense("saliency_proj1", ("saliency_proj",))
    if use_vfr:
        t += _vfr_entries()
    if use_mr2hd:
        t += _gru_entries(d)
    return t


def _vfr_entries() -> list[Entry]:
    t: list[Entry] = []
    v = ("vfr",)
    t.append(Entry("fuser.cq_attention.w4C", "column", ((v + ("w4C",), 0, -1),)))
    t.append(Entry("fuser.cq_attention.w4Q", "column", ((v + ("w4Q",), 0, -1),)))
    t.append(Entry("fuser.cq_attention.w4mlu", "row3", ((v + ("w4mlu",), 0, -1),)))
    t.append(Entry("fuser.cq_attention.cqa_linear.conv1d.weight", "conv1",
                   ((v + ("cqa_dense", "kernel"), 0, -1),)))  # fmt: skip
    t.append(Entry("fuser.cq_attention.cqa_linear.conv1d.bias", "vector",
                   ((v + ("cqa_dense", "bias"), 0, -1),)))  # fmt: skip
    t.append(
        Entry("fuser.cq_concat.weighted_pool.weight", "column", ((v + ("pool_weight",), 0, -1),))
    )
    t.append(Entry("fuser.cq_concat.conv1d.conv1d.weight", "conv1",
                   ((v + ("concat_dense", "kernel"), 0, -1),)))  # fmt: skip
    t.append(Entry("fuser.cq_concat.conv1d.conv1d.bias", "vector",
                   ((v + ("concat_dense", "bias"), 0, -1),)))  # fmt: skip
    return t


def _gru_entries(d: int) -> list[Entry]:
    t: list[Entry] = []
    g = ("mr2hd", "gru")
    gi = [g + (n,) for n in ("ir", "iz", "in")]
    gh = [g + (n,) for n in ("hr", "hz", "hn")]
    t.append(_packed("gru_extractor.gru.weight_ih_l0", "linear", gi, "kernel", d))
    t.append(_packed("gru_extractor.gru.weight_hh_l0", "linear", gh, "kernel", d))
    t.append(_packed("gru_extractor.gru.bias_ih_l0", "vector", gi, "bias", d))
    t.append(_packed("gru_extractor.gru.bias_hh_l0", "vector", gh, "bias", d))
    return t


# ------------------------------------------------------------------ transforms of one tensor
def _to_flax(kind: str, x: np.ndarray) -> np.ndarray:
    if kind == "linear":
        return x.T
    if kind == "conv1":
        return x[:, :, 0].T
    if kind in ("column", "row3", "scalar"):
        return x.reshape(-1) if kind != "scalar" else x.reshape(())
    return x


def _to_torch(kind: str, x: np.ndarray) -> np.ndarray:
    if kind == "linear":
        return x.T
    if kind == "conv1":
        return x.T[:, :, None]
    if kind == "column":
        return x.reshape(-1, 1)
    if kind == "row3":
        return x.reshape(1, 1, -1)
    if kind == "scalar":
        return x.reshape(1)
    return x


def _torch_shape(entry: Entry, flax_shapes: Mapping[Path, tuple[int, ...]]) -> tuple[int, ...]:
    """The official tensor shape implied by the Flax leaves an entry fills."""
    shapes = [flax_shapes[p] for p, _, _ in entry.parts]
    shape = _to_torch(entry.kind, np.zeros(shapes[0], np.int8)).shape
    if len(shapes) > 1:
        shape = (shape[0] * len(shapes),) + shape[1:]
    return shape


def flatten_params(tree: Mapping[str, Any], prefix: Path = ()) -> dict[Path, Any]:
    """Nested param dict -> {('module', ..., 'leaf'): array}."""
    out: dict[Path, Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(flatten_params(v, prefix + (str(k),)))
        else:
            out[prefix + (str(k),)] = v
    return out


def unflatten_params(flat: Mapping[Path, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten_params`."""
    tree: dict[str, Any] = {}
    for path, v in flat.items():
        node = tree
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = v
    return tree


# ------------------------------------------------------------------------ state_dict -> params
def _input_dims(sd: Mapping[str, np.ndarray]) -> tuple[int, int]:
    dims = []
    for name in ("input_vid_proj", "input_txt_proj"):
        key = f"{name}.0.LayerNorm.weight"
        if key not in sd:
            raise ValueError(f"missing key {key!r}: needed to know the {name} input dimension")
        dims.append(int(np.shape(sd[key])[0]))
    return dims[0], dims[1]


def expected_param_shapes(
    model_kwargs: Mapping[str, Any], vid_dim: int, txt_dim: int
) -> dict[Path, tuple[int, ...]]:
    """Flax param shapes of ``TRDETR(**model_kwargs)`` on inputs of these feature sizes."""
    import jax
    import jax.numpy as jnp

    from trdetr_jax.model import TRDETR

    model = TRDETR(**model_kwargs)
    b, lv, lt = 1, 4, 2
    args = (
        jnp.zeros((b, lt, txt_dim)),
        jnp.ones((b, lt)),
        jnp.zeros((b, lv, vid_dim)),
        jnp.ones((b, lv)),
    )
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *args, train=False))
    return {p: tuple(v.shape) for p, v in flatten_params(shapes["params"]).items()}


def strip_prefix(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Drop a ``module.`` prefix left by torch DataParallel, if every key carries it."""
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module.") :]: v for k, v in sd.items()}
    return dict(sd)


def state_dict_to_params(
    sd: Mapping[str, Any],
    model_kwargs: Mapping[str, Any],
    *,
    dtype: Any = None,
    strict: bool = True,
) -> dict[str, Any]:
    """Official state_dict (numpy or torch tensors) -> Flax ``params`` tree of numpy arrays.

    Checks every key against ``TRDETR(**model_kwargs)``: a missing, unexpected or mis-shaped
    key raises ValueError naming the key, the expected and the found shape. ``strict=False``
    ignores unexpected keys (e.g. the fuser's when loading official weights into a model with
    ``use_vfr=False``). ``dtype``: cast the arrays (default: keep the checkpoint's dtype).
    """
    sd = {k: as_numpy(v) for k, v in strip_prefix(sd).items()}
    vid_dim, txt_dim = _input_dims(sd)
    flax_shapes = expected_param_shapes(model_kwargs, vid_dim, txt_dim)
    table = key_table(**model_kwargs)
    _check_table_covers(table, flax_shapes)
    errors = []
    for e in table:
        want = _torch_shape(e, flax_shapes)
        if e.key not in sd:
            errors.append(f"missing key {e.key!r} (expected shape {want})")
        elif tuple(sd[e.key].shape) != want:
            errors.append(f"key {e.key!r}: expected shape {want}, found {tuple(sd[e.key].shape)}")
    known = {e.key for e in table}
    for k in sd:
        if strict and k not in known:
            errors.append(f"unexpected key {k!r} with shape {tuple(sd[k].shape)}")
    if errors:
        raise ValueError(
            f"state_dict does not match the model ({len(errors)} problems):\n  "
            + "\n  ".join(errors)
        )
    flat: dict[Path, np.ndarray] = {}
    for e in table:
        x = sd[e.key]
        for path, start, rows in e.parts:
            part = x if rows < 0 else x[start : start + rows]
            part = np.array(_to_flax(e.kind, part), order="C")  # copy; keeps 0-d
            flat[path] = part if dtype is None else part.astype(dtype)
    return unflatten_params(flat)


def _check_table_covers(table: list[Entry], flax_shapes: Mapping[Path, tuple[int, ...]]) -> None:
    covered = {p for e in table for p, _, _ in e.parts}
    missing = sorted("/".join(p) for p in set(flax_shapes) - covered)
    extra = sorted("/".join(p) for p in covered - set(flax_shapes))
    if missing or extra:
        raise ValueError(
            f"key table and model disagree: params not in the table {missing}, "
            f"table paths not in the model {extra}"
        )


# ------------------------------------------------------------------------ params -> state_dict
def _sizes_from_params(flat: Mapping[Path, Any]) -> dict[str, int]:
    def count(prefix: str, level: int = 1) -> int:
        names = {p[level] for p in flat if p[0] == prefix and len(p) > level}
        return len({n for n in names if n.startswith("layer_")})

    proj = {p[1].split("_")[1] for p in flat if p[0] == "input_vid_proj"}
    d = int(np.shape(flat[("saliency_proj", "bias")])[0])
    return dict(
        hidden_dim=d,
        enc_layers=count("encoder"),
        dec_layers=count("decoder"),
        n_input_proj=len(proj),
        use_vfr=any(p[0] == "vfr" for p in flat),
        use_mr2hd=any(p[0] == "mr2hd" for p in flat),
    )


def params_to_state_dict(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Flax ``params`` (or any pytree of the same structure, e.g. gradients) -> official keys."""
    tree = params.get("params", params) if isinstance(params, Mapping) else params
    flat = {p: np.asarray(v) for p, v in flatten_params(tree).items()}
    table = key_table(**_sizes_from_params(flat))
    _check_table_covers(table, {p: v.shape for p, v in flat.items()})
    sd: dict[str, np.ndarray] = {}
    for e in table:
        parts = [_to_torch(e.kind, flat[p]) for p, _, _ in e.parts]
        sd[e.key] = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
    return sd


def as_numpy(x: Any) -> np.ndarray:
    """A torch tensor (without importing torch) or array-like as a numpy array."""
    if hasattr(x, "detach"):  # torch tensor
        return x.detach().cpu().numpy()
    return np.asarray(x)
