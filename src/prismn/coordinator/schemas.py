"""Request and response bodies of the coordinator's HTTP API (validated at the boundary)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from prismn.swarm import Measurement, PeerIn


class JoinRequest(PeerIn):
    """A peer as a swarm file describes it, plus where its stage server listens and what it measured."""

    gpu: str = "CPU"
    data_addr: str = Field(min_length=3, max_length=256, description="host:port of the peer's stage server")
    rtt_ms: dict[str, float] = {}
    stage: dict[str, Any] | None = None


class JoinResponse(BaseModel):
    peer_id: str
    lease_s: float
    heartbeat_s: float
    peers: dict[str, str]  # other online peers' data addresses, to measure RTTs to


class HeartbeatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    free_vram_gb: float | None = Field(default=None, ge=0)
    measurements: list[Measurement] | None = None
    rtt_ms: dict[str, float] | None = None
    stage: dict[str, Any] | None = None


class HeartbeatResponse(BaseModel):
    lease_expires_in_s: float
    peers: dict[str, str]


class DeploymentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=256, description="catalog id/alias or prepared checkpoint name")
    strategy: str = "prismn"
    objective: Literal["latency", "carbon", "balanced"] | None = None
    preference: Literal["low-carbon", "low-latency"] = "low-carbon"
    weight: float = Field(default=0.5, ge=0, le=1)
    max_latency_ms: float | None = Field(default=None, gt=0)
    max_gco2e: float | None = Field(default=None, gt=0)
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    name: str | None = Field(default=None, max_length=128, description="the model name clients will use")


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = ""

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(str(p.get("text", "")) for p in self.content if isinstance(p, dict))
        return self.content or ""


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")  # unknown OpenAI fields (n=1, user, ...) are accepted
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1)

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)


class CompletionRequest(_Sampling):
    prompt: str | list[str]
