"""Serving: a plain-tensor exported program that loads without this repository, and a per-request scorer.

Served artefact (``EXPORT/serve/``, written by :func:`write_served`):

    model.pt2       ``torch.export`` program of :class:`TensorRanker` with dynamic batch (B) and id count (N);
                    pure ATen, loaded with ``torch.export.load(path).module()`` in a process that imports only torch
    model_aoti.pt2  optional AOTInductor package (``torch._inductor.aoti_load_package``). Compiled for the CPU ISA
                    of the machine that built it (its metadata records e.g. ``AVX512 AVX512_VNNI AMX_TILE``): build
                    it on the serving CPU type and keep ``model.pt2`` as the portable eager fallback
    serving.json    inputs (names, dtypes, shapes), sparse key order, tasks, and the feature map's hash

Inputs of the program: ``dense`` ``B x Fd`` float32 (``B x 1`` zeros when the data has no dense features),
``values`` int64 ids of all keys, key-major, ``lengths`` int32 ``F·B`` (key-major: all rows of key 0, then key 1,
...), and ``image_index`` int64 ``B`` when the model has an image arch (a frozen tower's export holds the item
embeddings, never the photos or the tower). Output: ``B x K`` logits (fp32). The program's ``.module()`` refuses
B = 1 (a guard of torchrec's KJT bookkeeping); pad one-row requests to two rows.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchrec.quant.embedding_modules import EmbeddingBagCollection as QuantEmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ranker.model import Ranker

SERVE_DIR = "serve"
PROGRAM = "model.pt2"
AOTI_PACKAGE = "model_aoti.pt2"
SERVING_JSON = "serving.json"


class TensorRanker(nn.Module):
    """The ranker over plain tensors (see the module docstring for the inputs).

    Args:
        model: an exported :class:`Ranker`.
        keys: sparse feature names in the model's (feature-map) order; the key order of ``values`` / ``lengths``.
    """

    def __init__(self, model: Ranker, keys: Sequence[str]) -> None:
        super().__init__()
        self.model, self.keys = model, list(keys)

    def forward(self, dense: Tensor, values: Tensor, lengths: Tensor, image_index: Tensor | None = None) -> Tensor:
        m = self.model
        kjt = KeyedJaggedTensor(keys=self.keys, values=values, lengths=lengths)
        return m.score_tokens(m.join_tokens(dense, m.sparse_arch(kjt), image_index))


def example_inputs(model: Ranker, batch: int = 8, multi: Sequence[bool] | None = None) -> tuple[Tensor, ...]:
    """Synthetic inputs of the program's signature (ids 0, two per multi-id row) for tracing."""
    keys = model.sparse_arch.feature_names
    multi = multi or [False] * len(keys)
    num_dense = model.dense_arch.proj.in_features if model.dense_arch is not None else 1
    lengths = torch.cat([torch.full((batch,), 2 if m else 1, dtype=torch.int32) for m in multi])
    values = torch.zeros(int(lengths.sum()), dtype=torch.int64)
    inputs: tuple[Tensor, ...] = (torch.zeros(batch, num_dense), values, lengths)
    if model.vision_arch is not None:
        inputs += (torch.zeros(batch, dtype=torch.int64),)
    return inputs


def export_program(model: Ranker) -> torch.export.ExportedProgram:
    """``torch.export`` of :class:`TensorRanker` with dynamic B and N (non-strict)."""
    from torch.export import Dim

    keys = model.sparse_arch.feature_names
    wrapper = TensorRanker(model.eval(), keys).eval()
    inputs = example_inputs(model)
    b, n = Dim("B", min=2, max=1 << 20), Dim("N", min=1, max=1 << 30)
    shapes: dict[str, Any] = {"dense": {0: b}, "values": {0: n}, "lengths": {0: len(keys) * b}}
    if model.vision_arch is not None:
        shapes["image_index"] = {0: b}
    with torch.no_grad():
        return torch.export.export(wrapper, inputs, strict=False, dynamic_shapes=shapes)


def write_served(model: Ranker, export_dir: Path, aoti: bool = False) -> dict[str, Any]:
    """Writes ``export_dir/serve/`` (program, optional AOTInductor package, serving.json); returns serving.json."""
    from features.processor import FEATURE_MAP

    out = Path(export_dir) / SERVE_DIR
    out.mkdir(parents=True, exist_ok=True)
    program = export_program(model)
    quantised = any(isinstance(m, QuantEmbeddingBagCollection) for m in model.modules())
    with warnings.catch_warnings():
        # Quantised tables are views into fbgemm's packed buffer; saving warns that it keeps the first view of a
        # shared storage "when weights are not on CPU". Ours are on CPU (the test reloads and compares scores).
        warnings.filterwarnings("ignore", message="No complete tensor found in the group", category=UserWarning)
        torch.export.save(program, out / PROGRAM)
    spec: dict[str, Any] = {
        "program": PROGRAM,
        "inputs": [
            {"name": "dense", "dtype": "float32", "shape": ["B", "Fd"]},
            {"name": "values", "dtype": "int64", "shape": ["N"], "layout": "ids of all keys, key-major"},
            {"name": "lengths", "dtype": "int32", "shape": ["F*B"], "layout": "key-major"},
        ],
        "output": {"name": "logits", "dtype": "float32", "shape": ["B", "K"]},
        "keys": list(model.sparse_arch.feature_names),
        "num_dense": model.dense_arch.proj.in_features if model.dense_arch is not None else 0,
        "min_batch": 2,
        "feature_map": FEATURE_MAP,
        "feature_map_sha256": hashlib.sha256((Path(export_dir) / FEATURE_MAP).read_bytes()).hexdigest()
        if (Path(export_dir) / FEATURE_MAP).exists()
        else None,
    }
    if model.vision_arch is not None:
        spec["inputs"].append({"name": "image_index", "dtype": "int64", "shape": ["B"], "missing": -1})
    if quantised:
        # The quantised lookup is fbgemm's operator: a serving process imports fbgemm_gpu before torch.export.load.
        spec["requires"] = ["fbgemm_gpu"]
    if aoti:
        import platform

        torch._inductor.aoti_compile_and_package(program, package_path=str(out / AOTI_PACKAGE))
        spec["aoti"] = {"package": AOTI_PACKAGE, "built_on": platform.processor() or platform.machine()}
    (out / SERVING_JSON).write_text(json.dumps(spec, indent=2) + "\n")
    return spec


class Scorer:
    """Scores one request: one user and context, C candidate items.

    The request-level sparse features (``request_features``: e.g. the user and context columns) are looked up once
    (batch of one) and broadcast to the C candidates; only the candidate features' lookups, the dense projection
    and the interaction run per candidate (the interaction mixes all tokens, so it is per-candidate work).

    Args:
        model: an exported :class:`Ranker` (``ranker.export.load_exported``).
        request_features: sparse feature names shared by every candidate of a request.
    """

    def __init__(self, model: Ranker, request_features: Sequence[str]) -> None:
        self.model = model.eval()
        names = model.sparse_arch.feature_names
        unknown = sorted(set(request_features) - set(names))
        if unknown:
            raise ValueError(f"request_features: {unknown} are not sparse features of the model ({names})")
        self.request = [n for n in names if n in set(request_features)]
        self.candidate = [n for n in names if n not in set(request_features)]
        self.bags = model.sparse_arch.ebc.embedding_bags  # table "t_<name>" -> nn.EmbeddingBag

    def _pool(self, name: str, ids: Tensor, lengths: Tensor) -> Tensor:
        offsets = torch.zeros(lengths.numel() + 1, dtype=torch.int64)
        offsets[1:] = lengths.cumsum(0)
        return self.bags[f"t_{name}"](input=ids, offsets=offsets).float()  # (rows, D)

    @torch.no_grad()
    def score(
        self,
        request: Mapping[str, Sequence[int] | Tensor],
        candidates: Mapping[str, tuple[Tensor, Tensor]],
        dense: Tensor | None = None,
        image_index: Tensor | None = None,
    ) -> Tensor:
        """``C x K`` logits.

        Args:
            request: processed ids per request feature (a list of ids; one id for single-id features).
            candidates: per candidate feature, ``(values, lengths)`` with C lengths.
            dense: ``C x Fd`` (or ``1 x Fd``, broadcast) processed dense features.
            image_index: ``C`` image rows (-1 none), models with an image arch only.
        """
        m = self.model
        count = int(next(iter(candidates.values()))[1].numel()) if candidates else int(dense.shape[0])  # type: ignore[union-attr]
        pooled: dict[str, Tensor] = {}
        for name in self.request:
            ids = torch.as_tensor(request[name], dtype=torch.int64).reshape(-1)
            row = self._pool(name, ids, torch.tensor([ids.numel()]))  # (1, D): once per request
            pooled[name] = row.expand(count, -1)
        for name in self.candidate:
            values, lengths = candidates[name]
            pooled[name] = self._pool(name, values.to(torch.int64), lengths.to(torch.int64))  # (C, D)
        sparse = torch.stack([pooled[n] for n in m.sparse_arch.feature_names], dim=1)  # (C, F, D)
        if dense is not None and dense.shape[0] == 1:
            dense = dense.expand(count, -1)  # request-level dense features, one row for every candidate
        return m.score_tokens(m.join_tokens(dense, sparse, image_index))
