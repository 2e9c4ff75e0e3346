"""A small synchronous client of the gateway's v1 API: httpx only (no torch, no numpy)."""

import base64
import time

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
RETRY_STATUSES = (429, 503)  # a full queue, a backend not (yet) up: worth another try later
MAX_RETRY_WAIT_S = 30.0  # a Retry-After above this is cut to it


class ApiError(Exception):
    """An error answer of the gateway (``{"error": {"type", "message", "param"?}}``), or no answer at all."""

    def __init__(self, type_: str, message: str, param: str | None = None, status: int | None = None):
        super().__init__(f"{type_}: {message}")
        self.type, self.message, self.param, self.status = type_, message, param, status


class Client:
    """The gateway at ``url``; ``api_key`` is sent as ``Authorization: Bearer``."""

    def __init__(self, url: str = DEFAULT_URL, api_key: str | None = None, timeout: float = 120.0, retries: int = 0):
        """``retries``: how many times a 429 or 503 answer is tried again, after its Retry-After seconds (else 0.5,
        1, 2, ... s; each wait at most MAX_RETRY_WAIT_S)."""
        self.url = url if "://" in url else f"http://{url}"
        self.retries = retries
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.http.close()

    def call(self, method: str, path: str, **kwargs) -> dict:
        """One request (tried again on 429/503, ``retries`` times); its JSON answer, or ApiError."""
        for attempt in range(self.retries + 1):
            response = self._send(method, path, **kwargs)
            if response.status_code not in RETRY_STATUSES or attempt == self.retries:
                break
            time.sleep(retry_wait(response.headers.get("retry-after"), attempt))
        if response.is_success:
            return response.json()
        try:
            error = response.json()["error"]
            type_, message, param = error["type"], error["message"], error.get("param")
        except (ValueError, KeyError, TypeError, AttributeError):  # not the gateway's shape (a proxy's page, say)
            text = response.text.strip()[:200] or response.reason_phrase
            raise ApiError(f"http_{response.status_code}", text, status=response.status_code) from None
        raise ApiError(type_, message, param, response.status_code)

    def _send(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            return self.http.request(method, path, **kwargs)
        except httpx.TimeoutException as e:
            raise ApiError("timeout", f"no answer from {self.url} in time ({e or type(e).__name__})") from None
        except httpx.TransportError as e:
            raise ApiError("connection_error", f"cannot reach {self.url}: {e or type(e).__name__}") from None

    def models(self) -> list[dict]:
        return self.call("GET", "/v1/models")["data"]

    def tokenize(self, images: list[bytes], model: str | None = None) -> dict:
        """PNG, JPEG or WebP files' bytes, sent base64 in JSON (its count limit answers 413 like the others)."""
        encoded = [base64.b64encode(data).decode("ascii") for data in images]
        return self.call("POST", "/v1/tokenize", json=_without_none(model=model, images=encoded))

    def detokenize(self, tokens: list[list[int]], model: str | None = None, fmt: str = "png") -> dict:
        return self.call("POST", "/v1/detokenize", json=_without_none(model=model, tokens=tokens, format=fmt))

    def generate(self, class_labels, n: int = 1, model: str | None = None, **options) -> dict:
        """``options``: num_steps, guidance_scale, guidance_schedule, temperature, seed, return_tokens, format."""
        body = _without_none(model=model, class_labels=class_labels, n=n, **options)
        return self.call("POST", "/v1/generate", json=body)

    def vary(
        self,
        image: bytes | None = None,
        tokens: list[int] | None = None,
        *,
        strength: float | None = None,
        mask: list[int] | None = None,
        class_labels=None,
        n: int = 1,
        model: str | None = None,
        **options,
    ) -> dict:
        """Variations of an image file's bytes (sent base64) or of its token ids: ``strength`` (the fraction of
        tokens re-generated) or ``mask`` (the positions); ``class_labels`` None is unconditional. ``options`` as for
        ``generate``."""
        encoded = base64.b64encode(image).decode("ascii") if image is not None else None
        body = _without_none(
            model=model, image=encoded, tokens=tokens, strength=strength, mask=mask, class_labels=class_labels, n=n
        )
        return self.call("POST", "/v1/variations", json={**body, **_without_none(**options)})


def retry_wait(retry_after: str | None, attempt: int) -> float:
    """Seconds before try ``attempt + 1``: the server's Retry-After (seconds) when it sends one, else an exponential
    backoff from 0.5 s; never more than MAX_RETRY_WAIT_S."""
    try:
        wait = float(retry_after) if retry_after is not None else 0.5 * 2**attempt
    except ValueError:  # an HTTP date: not worth parsing for a bounded wait
        wait = 0.5 * 2**attempt
    return min(max(wait, 0.0), MAX_RETRY_WAIT_S)


def _without_none(**fields) -> dict:
    return {k: v for k, v in fields.items() if v is not None}
