"""The shared HTTP layer: the pure retry functions and the decision table, then ``HttpSession`` over a
MockTransport."""

from __future__ import annotations

import email.utils
import logging
import pickle
import random
from collections.abc import Callable

import httpx
import pytest

from nluflow.backends.base import JobState, JobStatus
from nluflow.backends.errors import (
    AuthenticationError,
    ContractError,
    HTTPError,
    HTTPStatusError,
    MalformedResponseError,
    TransientHTTPError,
)
from nluflow.backends.http import (
    HttpOptions,
    HttpSession,
    OAuth2ClientCredentials,
    QueryTokenAuth,
    Redactor,
    api_key_auth,
    require,
    send_once,
    wait_for_job,
)
from nluflow.backends.http.auth import TOKEN_REFRESH_MARGIN
from nluflow.backends.http.options import INITIAL_BACKOFF, JITTER, MAX_BACKOFF, MAX_RETRIES, MAX_RETRY_AFTER
from nluflow.backends.http.retry import (
    Attempt,
    GiveUp,
    GiveUpReason,
    Retry,
    backoff_delay,
    decide,
    parse_retry_after,
    should_retry,
)
from nluflow.backends.http.session import Request
from nluflow.errors import BackendError, TrainingFailedError, TransientBackendError

NOW = 1_700_000_000.0

# ------------------------------------------------------------------------------------------ parse_retry_after


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("3", 3.0),
        ("0", 0.0),
        (" 7 ", 7.0),
        ("1.5", 1.5),
        ("-4", 0.0),
        ("100000", MAX_RETRY_AFTER),
        (None, None),
        ("", None),
        ("soon", None),
        ("nan", None),
        ("inf", None),
    ],
)
def test_parse_retry_after_seconds(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header, NOW) == expected


def test_parse_retry_after_http_date_is_relative_to_now() -> None:
    in_20s = email.utils.formatdate(NOW + 20, usegmt=True)
    assert parse_retry_after(in_20s, NOW) == pytest.approx(20.0)
    past = email.utils.formatdate(NOW - 300, usegmt=True)
    assert parse_retry_after(past, NOW) == 0.0
    far = email.utils.formatdate(NOW + 86_400, usegmt=True)
    assert parse_retry_after(far, NOW) == MAX_RETRY_AFTER
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412480.0 - 5) == pytest.approx(5.0)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 -0000", 1445412480.0 - 5) == pytest.approx(5.0)
    assert parse_retry_after("Wed, 32 Oct 2015 07:28:00 GMT", NOW) is None


# ---------------------------------------------------------------------------------------------- backoff_delay


def test_backoff_honours_the_server_and_caps_it() -> None:
    rng = random.Random(0)
    assert backoff_delay(0, 7.0, rng) == 7.0
    assert backoff_delay(5, 0.0, rng) == 0.0
    assert backoff_delay(0, 10_000.0, rng) == MAX_RETRY_AFTER


@pytest.mark.parametrize("attempt", range(12))
def test_backoff_is_capped_exponential_with_bounded_jitter(attempt: int) -> None:
    rng = random.Random(attempt)
    base = min(INITIAL_BACKOFF * 2**attempt, MAX_BACKOFF)
    delays = [backoff_delay(attempt, None, rng) for _ in range(200)]
    assert all(base * (1 - JITTER) <= d <= base for d in delays)
    assert max(delays) - min(delays) > 0.0  # jitter really varies
    assert max(delays) <= MAX_BACKOFF


def test_backoff_grows_until_the_cap() -> None:
    class Fixed(random.Random):
        def random(self) -> float:
            return 0.0

    delays = [backoff_delay(a, None, Fixed()) for a in range(10)]
    assert delays[:4] == [INITIAL_BACKOFF, INITIAL_BACKOFF * 2, INITIAL_BACKOFF * 4, INITIAL_BACKOFF * 8]
    assert delays[-1] == MAX_BACKOFF
    assert delays == sorted(delays)


# ----------------------------------------------------------------------------------------------- should_retry


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (408, True),
        (429, True),
        (500, True),
        (502, True),
        (503, True),
        (504, True),
        (400, False),
        (401, False),
        (403, False),
        (404, False),
        (409, False),
        (422, False),
        (200, False),
        (True, False),
    ],
)
def test_should_retry_statuses(status: int, expected: bool) -> None:
    assert should_retry(status) is expected


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (httpx.ConnectError("refused"), True),
        (httpx.ReadTimeout("slow"), True),
        (httpx.ConnectTimeout("slow"), True),
        (httpx.RemoteProtocolError("peer closed"), True),
        (httpx.ReadError("reset"), True),
        (httpx.UnsupportedProtocol("ftp://"), False),
        (httpx.LocalProtocolError("bad header"), False),
        (ValueError("bug"), False),
        (KeyError("bug"), False),
    ],
)
def test_should_retry_exceptions(exc: BaseException, expected: bool) -> None:
    assert should_retry(exc) is expected


# ----------------------------------------------------------------------------------------- decide (a table)

GET, POST = "GET", "POST"
BUDGET = GiveUp(GiveUpReason.BUDGET)
UNSAFE = GiveUp(GiveUpReason.UNSAFE)
NOT_RETRYABLE = GiveUp(GiveUpReason.NOT_RETRYABLE)
DEADLINE = GiveUp(GiveUpReason.DEADLINE)


@pytest.mark.parametrize(
    ("attempt", "options", "expected"),
    [
        # retryable statuses and transport errors on a safe request: backoff 0.5 * 2**n (draw 0: no jitter)
        (Attempt(0, GET, 500), HttpOptions(), Retry(INITIAL_BACKOFF)),
        (Attempt(2, GET, 503), HttpOptions(), Retry(INITIAL_BACKOFF * 4)),
        (Attempt(0, GET, 408), HttpOptions(), Retry(INITIAL_BACKOFF)),
        (Attempt(1, GET, httpx.ReadTimeout("slow")), HttpOptions(), Retry(INITIAL_BACKOFF * 2)),
        (Attempt(20, GET, 502), HttpOptions(max_retries=50), Retry(MAX_BACKOFF)),
        # the server's Retry-After wins, capped by the options
        (Attempt(0, GET, 429, retry_after=7.0), HttpOptions(), Retry(7.0)),
        (Attempt(0, GET, 429, retry_after=500.0), HttpOptions(max_retry_after=60.0), Retry(60.0)),
        # the budget: attempts after the first
        (Attempt(MAX_RETRIES, GET, 500), HttpOptions(), BUDGET),
        (Attempt(1, GET, 500), HttpOptions(max_retries=1), BUDGET),
        (Attempt(0, GET, 500), HttpOptions(max_retries=0), BUDGET),
        # a bug or bad input fails on the first attempt
        (Attempt(0, GET, 400), HttpOptions(), NOT_RETRYABLE),
        (Attempt(0, GET, 404), HttpOptions(), NOT_RETRYABLE),
        (Attempt(0, GET, 401), HttpOptions(), NOT_RETRYABLE),
        (Attempt(0, GET, httpx.UnsupportedProtocol("ftp")), HttpOptions(), NOT_RETRYABLE),
        # a POST that may have been processed is not resent ...
        (Attempt(0, POST, 502), HttpOptions(), UNSAFE),
        (Attempt(0, POST, httpx.ReadTimeout("slow")), HttpOptions(), UNSAFE),
        (Attempt(0, POST, httpx.RemoteProtocolError("dropped")), HttpOptions(), UNSAFE),
        (Attempt(0, POST, 200, malformed=True), HttpOptions(), UNSAFE),
        # ... unless it certainly was not, or it is idempotent (a key, or marked safe)
        (Attempt(0, POST, 429, retry_after=1.0), HttpOptions(), Retry(1.0)),
        (Attempt(0, POST, httpx.ConnectError("refused")), HttpOptions(), Retry(INITIAL_BACKOFF)),
        (Attempt(0, POST, 502, idempotent=True), HttpOptions(), Retry(INITIAL_BACKOFF)),
        (Attempt(0, GET, 502, idempotent=False), HttpOptions(), UNSAFE),
        (Attempt(0, POST, 400, idempotent=True), HttpOptions(), NOT_RETRYABLE),
        # a garbled 2xx body is retried like a 5xx where that is safe
        (Attempt(0, GET, 200, malformed=True), HttpOptions(), Retry(INITIAL_BACKOFF)),
        (Attempt(MAX_RETRIES, GET, 200, malformed=True), HttpOptions(), BUDGET),
        # the longest time a request may take
        (Attempt(1, GET, 500, elapsed=9.5), HttpOptions(max_elapsed=10.0), DEADLINE),
        (Attempt(1, GET, 500, elapsed=8.0), HttpOptions(max_elapsed=10.0), Retry(INITIAL_BACKOFF * 2)),
        (Attempt(1, GET, 500, elapsed=1e6), HttpOptions(), Retry(INITIAL_BACKOFF * 2)),
    ],
)
def test_decide(attempt: Attempt, options: HttpOptions, expected: Retry | GiveUp) -> None:
    assert decide(attempt, options, draw=0.0) == expected


def test_decide_takes_jitter_off_the_backoff_only() -> None:
    options = HttpOptions(jitter=0.5)
    assert decide(Attempt(1, GET, 500), options, draw=1.0) == Retry(INITIAL_BACKOFF * 2 * 0.5)
    assert decide(Attempt(1, GET, 429, retry_after=3.0), options, draw=1.0) == Retry(3.0)


def test_send_once_returns_any_answer_or_the_transport_error_and_never_retries() -> None:
    script = Script(httpx.Response(503), httpx.ConnectError("refused"))
    client = httpx.Client(base_url="http://api.test", transport=httpx.MockTransport(script))
    request = Request("POST", "/jobs", json_body={"a": 1}, idempotency_key="k-1")
    first = send_once(client, request, api_key_auth("key-abcdef"))
    assert isinstance(first, httpx.Response) and first.status_code == 503
    second = send_once(client, request, None)
    assert isinstance(second, httpx.ConnectError)
    assert len(script.requests) == 2
    assert script.requests[0].headers["Idempotency-Key"] == "k-1"
    assert script.requests[0].headers["X-API-Key"] == "key-abcdef"


def test_options_are_frozen_and_replace_gives_a_copy() -> None:
    options = HttpOptions()
    with pytest.raises(AttributeError):
        options.max_retries = 9  # type: ignore[misc]
    longer = options.with_read_timeout(900.0)
    assert longer.timeout.read == 900.0 and options.timeout.read != 900.0
    assert longer.timeout.connect == options.timeout.connect
    assert options.replace(max_retries=1).max_retries == 1 and options.max_retries == MAX_RETRIES


def test_options_headers_and_user_agent_reach_every_request() -> None:
    script = Script(httpx.Response(200, json={}))
    http = HttpOptions(
        transport=httpx.MockTransport(script), headers={"X-Team": "nlu"}, user_agent="nluflow-test/1"
    )
    with HttpSession.open("http://api.test", http, headers={"Accept": "application/json"}) as session:
        session.json("GET", "/x")
    sent = script.requests[0].headers
    assert (sent["X-Team"], sent["User-Agent"], sent["Accept"]) == (
        "nlu",
        "nluflow-test/1",
        "application/json",
    )
    assert session.client.is_closed


def test_a_request_past_its_longest_time_gives_up_with_a_transient_error() -> None:
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    script = Script(httpx.Response(503))
    http = HttpOptions(
        transport=httpx.MockTransport(script), sleep=sleep, clock=lambda: now[0], max_elapsed=2.0
    )
    session = HttpSession.open("http://api.test", http)
    with pytest.raises(TransientHTTPError, match="longest a request may take") as info:
        session.request("GET", "/x")
    assert info.value.status == 503 and now[0] <= 2.0 and len(script.requests) >= 2


# ----------------------------------------------------------------------------------------------- the errors

EVIDENCE = ("GET", "/x", 502, "req-1", "bad gateway")


@pytest.mark.parametrize(
    "kind", [HTTPStatusError, AuthenticationError, ContractError, TransientHTTPError, MalformedResponseError]
)
def test_every_http_error_pickles_with_its_evidence_and_restates(kind: type[HTTPError]) -> None:
    err = kind("GET /x failed", *EVIDENCE)
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is kind and str(again) == "GET /x failed"
    assert (again.method, again.url, again.status, again.request_id, again.body_excerpt) == EVIDENCE
    said = err.restated("GET /x failed; more words")
    assert type(said) is kind and str(said) == "GET /x failed; more words" and said.message == str(said)
    assert (said.method, said.url, said.status, said.request_id, said.body_excerpt) == EVIDENCE
    other = err.restated_as(TransientHTTPError, "now transient")
    assert type(other) is TransientHTTPError and isinstance(other, TransientBackendError)
    assert (other.status, other.request_id, other.body_excerpt) == (502, "req-1", "bad gateway")
    assert isinstance(err, HTTPError) and isinstance(err, BackendError)


# --------------------------------------------------------------------------------------------- HttpSession


class Script:
    """A MockTransport handler that answers from a list, recording every request."""

    def __init__(self, *answers: httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]):
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer) and not isinstance(answer, httpx.Response):
            return answer(request)
        return answer


def _session(script: Script, **kw: object) -> tuple[HttpSession, list[float]]:
    slept: list[float] = []
    http = HttpOptions(
        transport=httpx.MockTransport(script),
        sleep=slept.append,
        wall_clock=lambda: NOW,
        rng=random.Random(1),
    )
    session = HttpSession.open("http://api.test", http, **kw)  # type: ignore[arg-type]
    return session, slept


def test_retries_429_with_retry_after_then_succeeds() -> None:
    script = Script(
        httpx.Response(429, headers={"Retry-After": "2"}),
        httpx.Response(503, headers={"Retry-After": email.utils.formatdate(NOW + 3, usegmt=True)}),
        httpx.Response(200, json={"ok": True}),
    )
    session, slept = _session(script)
    assert session.json("GET", "/x") == {"ok": True}
    assert len(script.requests) == 3
    assert slept == [2.0, pytest.approx(3.0)]


def test_5xx_uses_jittered_backoff_and_gives_up_after_the_budget() -> None:
    script = Script(httpx.Response(500, text="boom", headers={"x-request-id": "req-9"}))
    session, slept = _session(script)
    with pytest.raises(TransientHTTPError) as info:
        session.request("GET", "/x")
    assert len(script.requests) == MAX_RETRIES + 1
    assert len(slept) == MAX_RETRIES
    assert all(
        INITIAL_BACKOFF * 2**i * (1 - JITTER) <= d <= INITIAL_BACKOFF * 2**i for i, d in enumerate(slept)
    )
    err = info.value
    assert isinstance(err, TransientBackendError)
    assert (err.status, err.request_id, err.body_excerpt) == (500, "req-9", "boom")
    assert "retry budget" in str(err)


def test_a_4xx_fails_at_once_with_the_evidence() -> None:
    body = {
        "type": "about:blank",
        "title": "Bad Request",
        "status": 400,
        "detail": "no such locale",
        "traceId": "t-1",
    }
    script = Script(httpx.Response(400, json=body))
    session, slept = _session(script)
    with pytest.raises(HTTPStatusError) as info:
        session.request("POST", "/flows/1/intents/train", json_body={"mode": "full"})
    assert len(script.requests) == 1 and slept == []
    err = info.value
    assert not isinstance(err, TransientBackendError)
    assert err.status == 400 and err.request_id == "t-1" and "no such locale" in err.body_excerpt
    assert "/flows/1/intents/train" in str(err) and "400" in str(err)
    # the evidence survives pickling (Prefect persists task exceptions)
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is HTTPStatusError and again.status == 400 and str(again) == str(err)


def test_transport_errors_retry_for_safe_requests() -> None:
    script = Script(httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.Response(204))
    session, slept = _session(script)
    assert session.request("GET", "/x").status_code == 204
    assert len(slept) == 2


def test_an_unsafe_post_is_not_resent_after_it_may_have_been_processed() -> None:
    for failure in (httpx.ReadTimeout("slow"), httpx.Response(502), httpx.RemoteProtocolError("dropped")):
        script = Script(failure, httpx.Response(201, json={"id": "job-2"}))
        session, _ = _session(script)
        with pytest.raises(TransientHTTPError, match="second job"):
            session.request("POST", "/jobs", json_body={})
        assert len(script.requests) == 1


def test_an_unsafe_post_is_resent_when_it_was_certainly_not_processed() -> None:
    script = Script(
        httpx.ConnectError("refused"), httpx.Response(429, headers={"Retry-After": "1"}), httpx.Response(201)
    )
    session, _ = _session(script)
    assert session.request("POST", "/jobs", json_body={}).status_code == 201
    assert len(script.requests) == 3


def test_the_idempotency_key_is_the_same_on_every_attempt() -> None:
    script = Script(httpx.Response(502), httpx.ReadTimeout("slow"), httpx.Response(201, json={"id": "j"}))
    session, _ = _session(script)
    session.request("POST", "/jobs", json_body={"a": 1}, idempotency_key="key-123")
    keys = [r.headers.get("Idempotency-Key") for r in script.requests]
    assert keys == ["key-123"] * 3


def test_malformed_json_is_retried_when_safe_and_typed_when_not() -> None:
    script = Script(httpx.Response(200, text='{"status": "do'), httpx.Response(200, json={"status": "done"}))
    session, _ = _session(script)
    assert session.json("GET", "/tasks/1") == {"status": "done"}

    script = Script(httpx.Response(200, text="<html>oops"))
    session, _ = _session(script)
    with pytest.raises(MalformedResponseError) as info:
        session.json("POST", "/jobs", json_body={})
    assert isinstance(info.value, TransientBackendError) and len(script.requests) == 1


def test_classify_hook_wins_over_the_generic_rules() -> None:
    script = Script(httpx.Response(500, json={"reason": "TrainingError"}))
    session, _ = _session(script)

    def classify(response: httpx.Response) -> BaseException | None:
        return TrainingFailedErrorLike("training failed") if response.status_code == 500 else None

    with pytest.raises(TrainingFailedErrorLike):
        session.request("GET", "/x", classify=classify)
    assert len(script.requests) == 1


class TrainingFailedErrorLike(BackendError):
    pass


def test_a_configuration_problem_is_not_retried() -> None:
    script = Script(httpx.UnsupportedProtocol("no scheme"))
    session, slept = _session(script)
    with pytest.raises(BackendError, match="configuration problem"):
        session.request("GET", "/x")
    assert slept == []


# --------------------------------------------------------------------------------------------------- auth


def test_api_key_and_query_token_auth() -> None:
    script = Script(httpx.Response(200, json={}))
    session, _ = _session(script, auth=api_key_auth("key-abcdef"))
    session.json("GET", "/x")
    assert script.requests[-1].headers["X-API-Key"] == "key-abcdef"
    session.auth = QueryTokenAuth("tok-abcdef")
    session.json("GET", "/x")
    assert script.requests[-1].url.params["token"] == "tok-abcdef"
    assert "tok-abcdef" not in repr(session.auth) and "key-abcdef" not in repr(api_key_auth("key-abcdef"))


class TokenServer:
    """An OAuth2 token endpoint plus one API route that accepts only the newest token."""

    def __init__(self, expires_in: int = 3600) -> None:
        self.expires_in = expires_in
        self.issued = 0
        self.valid: set[str] = set()
        self.forms: list[bytes] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth/token":
            self.forms.append(request.content)
            self.issued += 1
            token = f"tok-{self.issued:04d}"
            self.valid = {token}
            return httpx.Response(
                200, json={"access_token": token, "token_type": "bearer", "expires_in": self.expires_in}
            )
        auth = request.headers.get("Authorization", "")
        if auth.removeprefix("Bearer ") not in self.valid:
            return httpx.Response(401, json={"detail": "token expired"})
        return httpx.Response(200, json={"auth": auth})


def _oauth(server: TokenServer, now: list[float]) -> tuple[HttpSession, OAuth2ClientCredentials]:
    http = HttpOptions(
        transport=httpx.MockTransport(server),
        sleep=lambda s: None,
        clock=lambda: now[0],
        rng=random.Random(0),
    )
    session = HttpSession.open("http://api.test", http)
    auth = OAuth2ClientCredentials(session, "/oauth/token", "client-1", "s3cret-value", scope="nlu")
    session.auth = auth
    return session, auth


def test_oauth2_token_is_cached_and_refreshed_before_it_expires() -> None:
    server = TokenServer(expires_in=600)
    now = [0.0]
    session, auth = _oauth(server, now)
    assert session.json("GET", "/x") == {"auth": "Bearer tok-0001"}
    assert b"grant_type=client_credentials" in server.forms[0] and b"scope=nlu" in server.forms[0]
    now[0] = 500.0  # still well inside the lifetime minus the margin: cached
    session.json("GET", "/x")
    assert server.issued == 1
    now[0] = 600.0 - TOKEN_REFRESH_MARGIN + 1  # inside the margin: refreshed before it runs out
    assert session.json("GET", "/x") == {"auth": "Bearer tok-0002"}
    assert auth.tokens_fetched == 2


def test_oauth2_refreshes_once_on_401_then_fails_cleanly() -> None:
    server = TokenServer()
    now = [0.0]
    session, _ = _oauth(server, now)
    session.json("GET", "/x")
    server.valid = set()  # the server revoked the token early
    assert session.json("GET", "/x") == {"auth": "Bearer tok-0002"}
    assert server.issued == 2

    class Refuses(TokenServer):
        def __call__(self, request: httpx.Request) -> httpx.Response:
            response = super().__call__(request)
            if request.url.path != "/oauth/token":
                return httpx.Response(401, json={"detail": "nope"})
            return response

    session, _ = _oauth(Refuses(), now)
    with pytest.raises(AuthenticationError, match="fresh token was refused"):
        session.json("GET", "/x")


def test_oauth2_refused_credentials_are_an_authentication_error_without_the_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": "invalid_client", "echo": request.content.decode()})

    session = HttpSession.open(
        "http://api.test", HttpOptions(transport=httpx.MockTransport(handler), sleep=lambda s: None)
    )
    session.auth = OAuth2ClientCredentials(session, "/oauth/token", "client-1", "s3cret-value")
    caplog.set_level(logging.DEBUG, logger="nluflow")
    with pytest.raises(AuthenticationError) as info:
        session.json("GET", "/x")
    assert "invalid_client" in str(info.value)
    for text in (str(info.value), repr(info.value), info.value.body_excerpt, caplog.text, repr(session)):
        assert "s3cret-value" not in text


def test_redactor_removes_secrets_and_credential_shapes() -> None:
    redact = Redactor(["p@ss/word!", "abc"])
    text = redact(
        "url?token=abc123&x=1 Authorization: Bearer eyJhbGciOi.x.y "
        '{"access_token": "zzz", "client_secret": "p@ss/word!"} p%40ss%2Fword%21'
    )
    assert "abc123" not in text and "eyJhbGciOi" not in text and "zzz" not in text
    assert "p@ss/word!" not in text and "p%40ss%2Fword%21" not in text
    assert "x=1" in text
    assert redact.url("http://user:pw@h.test:8080/p?token=abc123&model=m") == (
        "http://h.test:8080/p?token=[REDACTED]&model=m"
    )


def test_contract_error_names_the_missing_field() -> None:
    with pytest.raises(ContractError, match=r"'_id'.*nothing"):
        require({"status": "queued"}, "_id", str, "the train task")


# ------------------------------------------------------------------------------------------------ polling


def test_wait_for_job_polls_with_growing_waits_and_reports_progress() -> None:
    states = [JobState.QUEUED, JobState.RUNNING, JobState.RUNNING, JobState.SUCCEEDED]
    seen: list[tuple[float, str]] = []
    slept: list[float] = []
    clock = [0.0]

    def status() -> JobStatus:
        state = states.pop(0)
        return JobStatus(state=state, progress=0.25 * (4 - len(states)), message=state.value)

    def sleep(s: float) -> None:
        slept.append(s)
        clock[0] += s

    final = wait_for_job(
        status,
        max_wait=100,
        what="job 1",
        sleep=sleep,
        clock=lambda: clock[0],
        on_progress=lambda p, m: seen.append((p, m)),
    )
    assert final.state is JobState.SUCCEEDED
    assert slept == [1.0, 1.5, 2.25]
    assert [p for p, _ in seen] == [0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize("state", [JobState.FAILED, JobState.CANCELLED])
def test_wait_for_job_maps_terminal_failures(state: JobState) -> None:
    with pytest.raises(TrainingFailedError, match=f"ended {state.value}: out of memory"):
        wait_for_job(
            lambda: JobStatus(state=state, message="out of memory"),
            max_wait=10,
            what="job 1",
            sleep=lambda s: None,
        )


def test_wait_for_job_has_a_hard_maximum_wait() -> None:
    clock = [0.0]

    def sleep(s: float) -> None:
        clock[0] += s

    with pytest.raises(TrainingFailedError, match="did not finish within 60 s"):
        wait_for_job(
            lambda: JobStatus(state=JobState.RUNNING, progress=0.5),
            max_wait=60,
            what="job 1",
            sleep=sleep,
            clock=lambda: clock[0],
        )
    assert clock[0] == pytest.approx(60.0)


def test_a_token_answer_without_the_token_is_a_contract_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"token_type": "bearer"}, headers={"x-request-id": "r-7"})

    http = HttpOptions(transport=httpx.MockTransport(handler), sleep=lambda s: None)
    session = HttpSession.open("http://api.test", http)
    session.auth = OAuth2ClientCredentials(session, "/oauth/token", "client-1", "s3cret-value")
    with pytest.raises(ContractError, match="without 'access_token'") as info:
        session.json("GET", "/x")
    assert (info.value.status, info.value.request_id, info.value.url) == (
        200,
        "r-7",
        "http://api.test/oauth/token",
    )
    assert "s3cret-value" not in str(info.value)
