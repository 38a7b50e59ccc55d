"""``POST /v1/feedback``: a score for an earlier request, which the router can learn from
(``llm-gateway router collect --from-store``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class FeedbackRequest(BaseModel):
    """How good an answer was: ``request_id`` is the ``x-request-id`` the gateway returned with it."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=128, description="the answer's x-request-id")
    score: float = Field(ge=0, le=1, strict=True, description="0 (bad) to 1 (good), a JSON number")
    comment: str | None = Field(default=None, max_length=4000)
