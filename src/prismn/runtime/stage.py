"""A pipeline stage: transformer layers ``[start, end)`` of a checkpoint, built from transformers' own
classes (``LlamaModel``/``Qwen2Model``/``MistralModel``/``GPT2Model`` with only this stage's layers).

The stage-local base model is built on the ``meta`` device (no random init, no memory), then the
stage's tensors are read from the safetensors files by name and assigned in place, renaming
``model.layers.{start+i}`` to ``layers.{i}``. Non-first stages take ``inputs_embeds`` (GPT-2's
learned position embedding is replaced by zeros there: it was already added on the first stage);
non-last stages replace the final norm by ``Identity``. The stage keeps no state: each session's KV
cache (a stage-local ``DynamicCache``) is passed in, so the stock forward derives masks and rotary
embeddings exactly as the unsplit model does.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from prismn.runtime import RuntimeStageError
from prismn.runtime.checkpoint import Checkpoint

log = logging.getLogger("prismn.runtime.stage")

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "float32": "float32",
               "bfloat16": "bfloat16", "float16": "float16"}
SHORT_DTYPE = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def dtype_name(d: str) -> str:
    try:
        return DTYPE_NAMES[d.lower()]
    except KeyError:
        raise RuntimeStageError(f"unknown dtype {d!r}: use fp32, bf16 or fp16") from None


def pick_device(device: str | None) -> str:
    d = (device or "auto").lower()
    if d == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if d.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeStageError("CUDA is not available on this machine: use --device cpu")
        return d
    if d != "cpu":
        raise RuntimeStageError(f"unknown device {device!r}: use cpu or cuda")
    return d


class ZeroPositions(nn.Module):
    """Stands in for GPT-2's ``wpe`` on non-first stages: positions were added on the first stage."""

    def __init__(self, hidden: int):
        super().__init__()
        self.hidden = hidden

    def forward(self, position_ids: torch.Tensor) -> torch.Tensor:
        return torch.zeros((*position_ids.shape, self.hidden), dtype=torch.float32, device=position_ids.device)


@dataclass(frozen=True)
class StageSpec:
    start: int
    end: int
    embedding: bool
    head: bool


def parse_layers(text: str) -> tuple[int, int]:
    """``"0:10"`` → (0, 10)."""
    try:
        a, b = (int(x) for x in text.split(":"))
    except ValueError:
        raise RuntimeStageError(f"bad layer range {text!r}: write START:END, e.g. 0:10 (END excluded)") from None
    return a, b


class Stage:
    """Layers ``[start, end)`` (+ embedding if first, + final norm and LM head if last)."""

    def __init__(
        self,
        ckpt: Checkpoint,
        start: int,
        end: int,
        *,
        embedding: bool | None = None,
        head: bool | None = None,
        dtype: str = "fp32",
        device: str | None = "cpu",
    ):
        from transformers import AutoConfig, AutoModel

        L = ckpt.num_layers
        if not (0 <= start < end <= L):
            raise RuntimeStageError(
                f"layers {start}:{end} are outside the model's 0:{L}: pick START < END <= {L}"
            )
        embedding = (start == 0) if embedding is None else embedding
        head = (end == L) if head is None else head
        if embedding and start != 0:
            raise RuntimeStageError(f"the embedding belongs to the stage that starts at layer 0, not {start}")
        if head and end != L:
            raise RuntimeStageError(f"the head belongs to the stage that ends at layer {L}, not {end}")
        if start == 0 and not embedding:
            raise RuntimeStageError("the stage holding layer 0 must hold the embedding (tokens come in as ids)")
        if end == L and not head:
            raise RuntimeStageError(
                f"the stage holding layer {L - 1} must hold the head: the runtime samples on the last stage"
            )
        self.ckpt = ckpt
        self.spec = StageSpec(start, end, embedding, head)
        self.start, self.end, self.first, self.last = start, end, embedding, head
        self.n_layers = end - start
        self.dtype_name = dtype_name(dtype)
        self.dtype = TORCH_DTYPES[self.dtype_name]
        self.device = pick_device(device)
        self.hidden_size = ckpt.hidden_size
        self.vocab_size = ckpt.vocab_size
        self.max_positions = ckpt.max_positions
        self.model_name = ckpt.name

        full_cfg = AutoConfig.from_pretrained(str(ckpt.path))
        cfg = copy.deepcopy(full_cfg)
        for k, v in list(vars(full_cfg).items()):  # per-layer lists (layer_types, ...) follow the slice
            if isinstance(v, list) and len(v) == L and k != "architectures":
                setattr(cfg, k, v[start:end])
        cfg.num_hidden_layers = self.n_layers
        cfg.use_cache = True
        self.config = cfg

        with torch.device("meta"):
            body = AutoModel.from_config(cfg, dtype=self.dtype)
        body.eval()
        if ckpt.family == "llama":
            if not embedding:
                body.embed_tokens = None
            if not head:
                body.norm = nn.Identity()
        else:  # gpt2
            if not embedding:
                body.wte = None
                body.wpe = ZeroPositions(self.hidden_size)
            if not head:
                body.ln_f = nn.Identity()
        self.body = body
        self.lm_head = nn.Linear(self.hidden_size, self.vocab_size, bias=False, device="meta", dtype=self.dtype) \
            if head else None

        pairs = ckpt.stage_tensor_names(start, end, embedding, head)
        tensors = ckpt.read_tensors([k for k, _ in pairs], dtype=self.dtype, device=self.device)
        sd_body = {}
        for ck_name, mod_name in pairs:
            t = tensors[ck_name]
            if mod_name == "lm_head.weight":
                assert self.lm_head is not None
                # a tied head shares the embedding's storage when one stage holds both
                self.lm_head.load_state_dict({"weight": t}, assign=True)
            else:
                sd_body[mod_name.removeprefix("body.")] = t
        del tensors
        expected = set(body.state_dict().keys())
        missing = expected - set(sd_body)
        unexpected = set(sd_body) - expected
        if missing or unexpected:
            raise RuntimeStageError(
                f"{ckpt.path}: stage tensors do not match the {ckpt.model_type} layout "
                f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}): is the checkpoint complete?"
            )
        body.load_state_dict(sd_body, assign=True, strict=True)
        self._materialise_buffers(cfg)
        self.param_bytes = sum(p.numel() * p.element_size() for p in self.parameters())
        self._batchable: bool | None = None

    # --------------------------------------------------------------------------- setup helpers
    def _materialise_buffers(self, cfg: Any) -> None:
        """Non-persistent buffers (rotary ``inv_freq``) are not in checkpoints: rebuild them on the device."""
        rot = getattr(self.body, "rotary_emb", None)
        if rot is not None:
            with torch.device("cpu"):  # computed in fp32 on the CPU like the unsplit model, then moved
                self.body.rotary_emb = type(rot)(config=cfg).to(self.device)
        for name, buf in self.body.named_buffers():
            if buf.is_meta:
                raise RuntimeStageError(f"buffer {name} of {self.ckpt.model_type} could not be materialised")
        if self.lm_head is not None:
            self.lm_head.eval()

    def parameters(self) -> list[nn.Parameter]:
        ps = {id(p): p for p in self.body.parameters()}
        if self.lm_head is not None:
            ps.setdefault(id(self.lm_head.weight), self.lm_head.weight)
        return list(ps.values())

    # --------------------------------------------------------------------------- running
    def new_cache(self) -> Any:
        from transformers import DynamicCache

        return DynamicCache(config=self.config)

    @torch.inference_mode()
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids [1, n] → input embeddings [1, n, hidden] (first stage only)."""
        emb = self.body.embed_tokens if self.ckpt.family == "llama" else self.body.wte
        return emb(ids)

    @torch.inference_mode()
    def layers(self, h: torch.Tensor, cache: Any, pos: int) -> torch.Tensor:
        """This stage's layers (+ final norm on the last stage) on [1, n, hidden] at absolute ``pos``."""
        n = h.shape[1]
        position_ids = torch.arange(pos, pos + n, device=h.device).unsqueeze(0)
        out = self.body(inputs_embeds=h, position_ids=position_ids, cache=cache, use_cache=True)
        return out.last_hidden_state

    @property
    def batchable(self) -> bool:
        """Whether decode steps of several sessions can share one forward pass here: sliding-window
        layers keep a cache shorter than the positions they have seen, which left padding cannot
        line up, so such models run their sessions one after another instead."""
        if self._batchable is None:
            self._batchable = not any(getattr(layer, "is_sliding", False) for layer in self.new_cache().layers)
        return self._batchable

    @torch.inference_mode()
    def decode_batch(self, x: torch.Tensor, caches: list[Any], positions: list[int]) -> torch.Tensor:
        """One decode token for each of B sessions in one pass: ids [B] (first stage) or hidden [B, h].

        Each session keeps its own cache. For the pass their caches are stacked with left padding
        (masked out), every row at its own absolute position; afterwards each session's cache is a
        view of its row, so the next stack copies it once. Returns hidden [B, h] or logits [B, vocab].
        """
        B = len(caches)
        x = x.to(self.device)
        h = self.embed(x.view(B, 1)) if self.first else x.view(B, 1, -1).to(self.dtype)
        if B == 1:
            out = self.layers(h, caches[0], positions[0])
            return (self.logits(out) if self.last else out).reshape(1, -1)
        lens = [c.get_seq_length() for c in caches]
        if lens != list(positions):
            raise RuntimeStageError(f"cache lengths {lens} do not match the steps' positions {list(positions)}")
        L = max(lens)
        batch = self.new_cache()
        mask = torch.ones((B, L + 1), dtype=torch.long, device=self.device)
        for i, n in enumerate(lens):
            mask[i, : L - n] = 0
        if L:
            for li, layer in enumerate(batch.layers):
                ks, vs = [], []
                for c, n in zip(caches, lens, strict=True):
                    k, v = c.layers[li].keys, c.layers[li].values
                    if n < L:  # left padding: zeros the mask hides
                        pad = (0, 0, L - n, 0)
                        k, v = torch.nn.functional.pad(k, pad), torch.nn.functional.pad(v, pad)
                    ks.append(k)
                    vs.append(v)
                layer.update(torch.cat(ks), torch.cat(vs))
        position_ids = torch.tensor(lens, device=self.device).view(B, 1)
        out = self.body(inputs_embeds=h, position_ids=position_ids, attention_mask=mask, cache=batch,
                        use_cache=True).last_hidden_state
        for li, layer in enumerate(batch.layers):
            for i, (c, n) in enumerate(zip(caches, lens, strict=True)):
                own = c.layers[li]
                if not own.is_initialized:
                    own.lazy_initialization(layer.keys, layer.values)
                own.keys = layer.keys[i: i + 1, :, L - n:, :]
                own.values = layer.values[i: i + 1, :, L - n:, :]
        return (self.logits(out) if self.last else out).reshape(B, -1)

    @torch.inference_mode()
    def logits(self, h: torch.Tensor, all_positions: bool = False) -> torch.Tensor:
        """LM head on the last position (or all) → float32 [1, n, vocab] (last stage only)."""
        assert self.lm_head is not None
        if not all_positions:
            h = h[:, -1:, :]
        return self.lm_head(h).float()

    @torch.inference_mode()
    def forward(self, x: torch.Tensor, cache: Any, pos: int, all_logits: bool = False,
                head: bool = True) -> torch.Tensor:
        """First stage: ids [1, n]; others: hidden [1, n, h]. Last stage returns logits (hidden when
        ``head`` is False: a prompt chunk whose token nobody needs), others hidden."""
        x = x.to(self.device)
        h = self.embed(x) if self.first else x.to(self.dtype)
        h = self.layers(h, cache, pos)
        return self.logits(h, all_logits) if (self.last and head) else h

    def info(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "model_type": self.ckpt.model_type,
            "fingerprint": self.ckpt.fingerprint,
            "num_layers": self.ckpt.num_layers,
            "layers": [self.start, self.end],
            "embedding": self.first,
            "head": self.last,
            "hidden_size": self.hidden_size,
            "vocab_size": self.vocab_size,
            "dtype": self.dtype_name,
            "device": self.device,
            "param_bytes": self.param_bytes,
            "max_positions": self.max_positions,
        }


class Sampler:
    """Temperature + top-p sampling, deterministic given the seed; temperature 0 is greedy argmax."""

    def __init__(self, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0):
        if not (temperature >= 0.0) or temperature > 100:
            raise RuntimeStageError(f"temperature {temperature} must be in [0, 100]")
        if not (0.0 < top_p <= 1.0):
            raise RuntimeStageError(f"top_p {top_p} must be in (0, 1]")
        self.temperature, self.top_p, self.seed = float(temperature), float(top_p), int(seed)
        self.gen = torch.Generator(device="cpu")
        self.gen.manual_seed(self.seed)

    @torch.inference_mode()
    def __call__(self, logits: torch.Tensor) -> int:
        """logits [..., vocab] (last position used) → token id."""
        z = logits.reshape(-1, logits.shape[-1])[-1].float().cpu()
        if self.temperature == 0.0:
            return int(torch.argmax(z).item())
        z = z / self.temperature
        if self.top_p < 1.0:
            sorted_z, idx = torch.sort(z, descending=False)
            cum = torch.softmax(sorted_z, dim=-1).cumsum(dim=-1)
            drop = cum <= (1.0 - self.top_p)
            drop[-1] = False  # always keep the most likely token
            z = z.clone()
            z[idx[drop]] = float("-inf")
        probs = torch.softmax(z, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.gen).item())
