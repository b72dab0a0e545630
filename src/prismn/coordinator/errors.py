"""The coordinator API's one exception type: every refusal is an ApiError with an HTTP status and one line
that names the fix, rendered in OpenAI's error shape."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 retry_after_s: int | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.retry_after_s = retry_after_s

    def response(self) -> JSONResponse:
        headers = {"Retry-After": str(self.retry_after_s)} if self.retry_after_s is not None else None
        if self.status == 401:
            headers = {**(headers or {}), "WWW-Authenticate": "Bearer"}
        return JSONResponse(status_code=self.status, headers=headers, content=self.body())

    def body(self) -> dict[str, Any]:
        kind = ("rate_limit_error" if self.status == 429 else "authentication_error" if self.status == 401
                else "permission_error" if self.status == 403 else "invalid_request_error" if self.status < 500
                else "server_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


class Unauthorized(ApiError):
    def __init__(self, message: str, code: str = "invalid_credentials"):
        super().__init__(401, message, code)


class Forbidden(ApiError):
    def __init__(self, message: str, code: str = "forbidden"):
        super().__init__(403, message, code)


class NotFound(ApiError):
    def __init__(self, message: str, code: str = "not_found"):
        super().__init__(404, message, code)
