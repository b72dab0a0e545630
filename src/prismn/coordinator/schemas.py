"""Request and response bodies of the coordinator's HTTP API (validated at the boundary); the peers'
messages (join, heartbeat) live in :mod:`prismn.protocol`, shared with the peer."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from prismn.protocol import (  # noqa: F401 - re-exported: the coordinator's routes import them from here
    HeartbeatRequest,
    HeartbeatResponse,
    JoinRequest,
    JoinResponse,
)


class DeploymentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=256, description="catalog id/alias or prepared checkpoint name")
    strategy: str = "prismn"
    objective: Literal["latency", "carbon", "balanced"] | None = None
    preference: Literal["low-carbon", "low-latency"] = "low-carbon"
    weight: float = Field(default=0.5, ge=0, le=1)
    carbon_scope: Literal["reserved", "operational", "total"] = Field(
        default="reserved", description="carbon the objective counts: reserved (every used peer held for the "
                                        "whole step: idle draw, embodied), operational (compute time only) or total")
    max_latency_ms: float | None = Field(default=None, gt=0)
    max_gco2e: float | None = Field(default=None, gt=0)
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    name: str | None = Field(default=None, max_length=128, description="the model name clients will use")
    max_sessions: int | None = Field(default=None, ge=1, le=4096,
                                     description="admit at most this many requests at once (default: what "
                                                 "the stages and the plan's KV budget can hold)")
    max_queue: int | None = Field(default=None, ge=0, le=100000,
                                  description="requests that may wait beyond that (default: --max-queue); then 429")
    spares: int = Field(default=0, ge=0, le=4, description="warm spares: free peers that pre-load a copy of a "
                                                           "stage, so losing its peer needs no weights loaded")


def _utf8(value: Any, where: str) -> Any:
    """JSON may carry a lone surrogate (\\ud800) that no tokenizer can encode: refuse it here."""
    try:
        if isinstance(value, str):
            value.encode("utf-8")
        elif isinstance(value, list):
            for v in value:
                _utf8(v, where)
    except UnicodeEncodeError:
        raise ValueError(f"{where} holds a lone surrogate (\\ud800-\\udfff) that is not text: send valid UTF-8") \
            from None
    return value


class DeploymentLimits(BaseModel):
    """PATCH /v1/deployments/{id}: how many requests run at once and wait (null: the default)."""

    model_config = ConfigDict(extra="forbid")
    max_sessions: int | None = Field(default=None, ge=1, le=4096)
    max_queue: int | None = Field(default=None, ge=0, le=100000)


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True)
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = ""

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(str(p.get("text", "")) for p in self.content if isinstance(p, dict))
        return self.content or ""

    @field_validator("content")
    @classmethod
    def _valid_text(cls, v: Any) -> Any:
        if isinstance(v, list):
            for part in v:
                _utf8(part.get("text", ""), "content")
            return v
        return _utf8(v, "content")


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    include_usage: bool = False


#: OpenAI parameters Prismn does not implement: refused by name instead of silently ignored
UNSUPPORTED = {"logprobs": "log-probabilities are not returned yet", "top_logprobs": "log-probabilities are not "
               "returned yet", "echo": "the prompt is not echoed", "best_of": "best_of is not supported",
               "suffix": "suffix (insertion) is not supported", "tools": "tool calls are not supported",
               "functions": "function calls are not supported", "logit_bias": "logit_bias is not supported"}


class _Sampling(BaseModel):
    # strict: "max_tokens": "3" is a 400, as OpenAI answers; unknown fields (user, metadata...) are accepted
    model_config = ConfigDict(extra="allow", strict=True)
    model: str = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    stop: str | list[str] | None = Field(default=None)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=16)

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: Any) -> Any:
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return _utf8(v, "stop")

    @model_validator(mode="after")
    def _refuse_unsupported(self) -> _Sampling:
        for name, why in UNSUPPORTED.items():
            v = (self.model_extra or {}).get(name)
            if v not in (None, False, 0, "", [], {}) and not (name == "best_of" and v == 1):
                raise ValueError(f"'{name}' is not supported by Prismn ({why}): remove it from the request")
        return self

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1, max_length=1024)


class CompletionRequest(_Sampling):
    prompt: str | list[str] = Field(description="a prompt, or a list of prompts: one completion (x n) each")

    @field_validator("prompt")
    @classmethod
    def _nonempty(cls, v: Any) -> Any:
        if v == "" or v == [] or (isinstance(v, list) and any(p == "" for p in v)):
            raise ValueError("the prompt is empty: send at least one character")
        if isinstance(v, list) and len(v) > 16:
            raise ValueError("at most 16 prompts in one request")
        return _utf8(v, "prompt")

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)



class CredentialRequest(BaseModel):
    """POST /v1/admin/join-tokens or /v1/admin/api-keys: a new secret, shown once."""

    model_config = ConfigDict(extra="forbid")
    label: str | None = Field(default=None, max_length=128)
    ttl_s: float | None = Field(default=None, gt=0, le=10 * 365 * 86400, allow_inf_nan=False,
                                description="seconds until it expires (default: never; revoke it instead)")
