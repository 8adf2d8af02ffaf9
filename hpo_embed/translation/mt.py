"""Machine-translation backends behind one small interface.

``Backend.translate(texts, target) -> list[Result]`` translates one batch (the caller
keeps batches within ``max_segments`` / ``max_characters``). Three real backends:

* ``google``   -- Google Cloud Translation v3, official client, ``translate_text``
  (parent ``projects/{project}/locations/{location}``, ``text/plain``), REST transport,
  the client's ``Retry`` with exponential backoff on 429/5xx/timeouts. Credentials come
  only from the environment (ADC / ``GOOGLE_APPLICATION_CREDENTIALS``).
* ``deepl``    -- the ``deepl`` package (key from env ``DEEPL_AUTH_KEY``); the library
  retries 429/5xx itself.
* ``apertium`` -- Debian's ``apertium`` + ``apertium-eng-spa``, English->Spanish,
  offline. Terms are sent one per line, each ending in ``.`` (otherwise Apertium joins
  lines and reorders words); unknown words come back marked ``*`` (and ``#``/``@`` for
  generation/transfer problems): the markers are removed from the text and the words
  recorded in ``Result.unknown``.
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import os
import re
import shutil
import subprocess
import threading

import requests
from tqdm import tqdm

from hpo_embed.common import UserError, log

# List prices per million characters (USD), for the dry run's estimate.
LIST_PRICE_PER_MILLION = {"google": 20.0, "deepl": 25.0, "apertium": 0.0}


@dataclasses.dataclass
class Result:
    text: str
    unknown: list[str] = dataclasses.field(default_factory=list)


class BackendUnavailable(Exception):
    """The backend cannot run here (no binary, no credentials): skip it, say why."""


class Backend:
    name = "?"
    translator = None          # recorded as the Text's ``translator``
    paid = False
    max_segments = 1024
    max_characters = 30000

    def __init__(self) -> None:
        self.stats: dict[str, dict[str, int]] = {}   # lang -> requests, retries
        self._lock = threading.Lock()

    def supports(self, lang: str) -> bool:
        raise NotImplementedError

    def translate(self, texts: list[str], target: str) -> list[Result]:
        raise NotImplementedError

    def _count(self, lang: str, requests: int = 0, retries: int = 0) -> None:
        with self._lock:
            st = self.stats.setdefault(lang, {"requests": 0, "retries": 0})
            st["requests"] += requests
            st["retries"] += retries


# --------------------------------------------------------------------------- google

class GoogleBackend(Backend):
    name = "google"
    translator = "Google Cloud Translation v3"
    paid = True

    def __init__(self, project: str | None = None, location: str = "global",
                 endpoint: str | None = None, credentials=None, timeout: float = 60.0,
                 retry_deadline: float = 300.0, initial_backoff: float = 1.0) -> None:
        super().__init__()
        from google.api_core import exceptions as gexc
        from google.api_core.retry import Retry, if_exception_type
        from google.cloud import translate_v3

        project = project or os.environ.get("GOOGLE_CLOUD_PROJECT")
        if not project:
            raise BackendUnavailable("no project: set translate.google_project or env GOOGLE_CLOUD_PROJECT")
        if credentials is None:
            import google.auth
            from google.auth.exceptions import DefaultCredentialsError
            try:
                credentials, _ = google.auth.default(
                    scopes=["https://www.googleapis.com/auth/cloud-translation"])
            except DefaultCredentialsError as exc:
                cred_file = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
                if cred_file:   # set but unusable: a mistake to report, not a backend to skip
                    cause = (str(exc).splitlines() or ["unusable"])[0][:200]
                    raise UserError(f"translate.mt: google: env GOOGLE_APPLICATION_CREDENTIALS={cred_file}: "
                                    f"{cause}") from None
                raise BackendUnavailable("no credentials: set env GOOGLE_APPLICATION_CREDENTIALS "
                                         "(service-account file) or run `gcloud auth application-default login`"
                                         ) from None
        opts = {"api_endpoint": endpoint} if endpoint else None
        self.client = translate_v3.TranslationServiceClient(credentials=credentials, transport="rest",
                                                            client_options=opts)
        self.parent = f"projects/{project}/locations/{location}"
        self.timeout = timeout
        from google.auth import exceptions as auth_exc

        # transient: 429, 5xx, timeouts and connection failures (no network, DNS, reset);
        # requests' ConnectionError/Timeout are not the builtin ones, and a token refresh
        # without network raises google.auth's TransportError
        self._predicate = if_exception_type(gexc.TooManyRequests, gexc.InternalServerError,
                                            gexc.BadGateway, gexc.ServiceUnavailable, gexc.GatewayTimeout,
                                            gexc.DeadlineExceeded, ConnectionError, TimeoutError,
                                            requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                                            auth_exc.TransportError)
        self._requests = requests
        self._auth_exc = auth_exc
        self._Retry = Retry
        self.initial_backoff = initial_backoff
        self.retry_deadline = retry_deadline
        self._gexc = gexc

    def _retry(self, lang: str):
        """The client's Retry: exponential backoff (x2, capped at 60 s) on 429/5xx/timeouts
        for at most ``retry_deadline`` seconds; every retry is counted."""
        return self._Retry(predicate=self._predicate, initial=self.initial_backoff, maximum=60.0,
                           multiplier=2.0, timeout=self.retry_deadline,
                           on_error=lambda exc: self._count(lang, retries=1))

    def supports(self, lang: str) -> bool:
        return True

    def translate(self, texts: list[str], target: str) -> list[Result]:
        from google.api_core.exceptions import RetryError
        req = {"parent": self.parent, "contents": texts, "mime_type": "text/plain",
               "source_language_code": "en", "target_language_code": target}
        self._count(target, requests=1)
        try:
            resp = self.client.translate_text(request=req, retry=self._retry(target), timeout=self.timeout)
        except RetryError as exc:
            raise UserError(f"translate.mt: google: gave up after retrying for "
                            f"{self.retry_deadline:g} s (translate.retry_deadline): {exc.cause}") from None
        except self._gexc.GoogleAPICallError as exc:
            raise UserError(f"translate.mt: google: {exc.code} {exc.message}") from None
        except self._auth_exc.RefreshError as exc:
            raise UserError(f"translate.mt: google: credentials refused: {str(exc).splitlines()[0][:200]}") from None
        except (self._requests.exceptions.RequestException, self._auth_exc.TransportError) as exc:
            raise UserError(f"translate.mt: google: request failed: {type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:200] if str(exc) else ''}") from None
        out = [Result(t.translated_text) for t in resp.translations]
        if len(out) != len(texts):
            raise UserError(f"translate.mt: google returned {len(out)} translations for {len(texts)} texts")
        return out


# --------------------------------------------------------------------------- deepl

DEEPL_TARGETS = {"en": "EN-GB", "pt": "PT-PT", "zh": "ZH-HANS", "nb": "NB"}


class DeepLBackend(Backend):
    name = "deepl"
    translator = "DeepL"
    paid = True
    max_segments = 50          # DeepL: at most 50 texts per request
    max_characters = 30000     # well under the 128 KiB request size limit

    def __init__(self, auth_key: str | None = None, server_url: str | None = None,
                 timeout: float = 60.0) -> None:
        super().__init__()
        import deepl

        auth_key = auth_key or os.environ.get("DEEPL_AUTH_KEY")
        if not auth_key:
            raise BackendUnavailable("no key: set env DEEPL_AUTH_KEY")
        deepl.http_client.max_network_retries = 5          # the library's own backoff on 429/5xx
        deepl.http_client.min_connection_timeout = timeout
        self.translator_client = deepl.Translator(auth_key, server_url=server_url)
        self._deepl = deepl

    def supports(self, lang: str) -> bool:
        return True

    def translate(self, texts: list[str], target: str) -> list[Result]:
        self._count(target, requests=1)
        try:
            res = self.translator_client.translate_text(
                texts, source_lang="EN", target_lang=DEEPL_TARGETS.get(target, target.upper()))
        except self._deepl.DeepLException as exc:
            raise UserError(f"translate.mt: deepl: {exc}") from None
        if not isinstance(res, list):
            res = [res]
        return [Result(r.text) for r in res]


# --------------------------------------------------------------------------- apertium

_MARKED = re.compile(r"[*#@](\w[\w'-]*)")


class ApertiumBackend(Backend):
    name = "apertium"
    translator = "Apertium eng-spa"
    max_segments = 1024
    max_characters = 30000
    PAIRS = {"es": "eng-spa"}

    def __init__(self, binary: str = "apertium") -> None:
        super().__init__()
        self.binary = shutil.which(binary)
        if self.binary is None:
            raise BackendUnavailable("the apertium binary is not installed "
                                     "(run `bash scripts/system-packages.sh` as root)")
        probe = subprocess.run([self.binary, "-l"], capture_output=True, text=True)
        if "eng-spa" not in probe.stdout.split():
            raise BackendUnavailable("apertium has no eng-spa mode (apt-get install apertium-eng-spa)")

    def supports(self, lang: str) -> bool:
        return lang in self.PAIRS

    def translate(self, texts: list[str], target: str) -> list[Result]:
        lines = []
        for t in texts:
            t = " ".join(t.split())           # one line per term
            lines.append(t if t.endswith((".", "?", "!")) else t + ".")
        self._count(target, requests=1)
        proc = subprocess.run([self.binary, self.PAIRS[target]], input="\n".join(lines) + "\n",
                              capture_output=True, text=True, encoding="utf-8")
        if proc.returncode != 0:
            raise UserError(f"translate.mt: apertium failed: {proc.stderr.strip().splitlines()[-1:]}")
        out_lines = proc.stdout.split("\n")
        while out_lines and out_lines[-1] == "" and len(out_lines) > len(texts):
            out_lines.pop()
        if len(out_lines) != len(texts):
            raise UserError(f"translate.mt: apertium returned {len(out_lines)} lines for {len(texts)} terms")
        results = []
        for src, line in zip(texts, out_lines):
            unknown = _MARKED.findall(line)
            text = re.sub(r"[*#@](?=\w)", "", line).strip()
            if not src.rstrip().endswith(".") and text.endswith("."):
                text = text[:-1].rstrip()
            results.append(Result(text, unknown))
        return results


def make_backend(name: str, params) -> Backend:
    """Build a configured backend from ``translate`` params; BackendUnavailable if it can't run."""
    if name == "google":
        return GoogleBackend(project=params.google_project, location=params.google_location,
                             endpoint=params.google_endpoint, timeout=params.request_timeout,
                             retry_deadline=params.retry_deadline)
    if name == "deepl":
        return DeepLBackend(server_url=params.deepl_server_url, timeout=params.request_timeout)
    if name == "apertium":
        return ApertiumBackend()
    raise UserError(f"translate.mt: unknown backend {name!r}")


def _batches(texts: list[str], max_segments: int, max_chars: int) -> list[list[str]]:
    out, cur, n = [], [], 0
    for t in texts:
        if cur and (len(cur) >= max_segments or n + len(t) > max_chars):
            out.append(cur)
            cur, n = [], 0
        cur.append(t)
        n += len(t)
    if cur:
        out.append(cur)
    return out


class MTScheduler:
    """Runs machine-translation batches ``(lang, backend, texts)`` on ``concurrency``
    threads in order, stopping new paid requests at ``max_characters``. ``run(on_result)``
    calls ``on_result(lang, backend, texts, results)`` in the calling thread as each batch
    finishes; afterwards ``sent`` (characters per language), ``budget_hit`` and ``error``
    (the first UserError of a backend; no new batch starts after it) tell what happened."""

    def __init__(self, work: list[tuple[str, Backend, list[str]]], concurrency: int, max_characters: int | None):
        self.work, self.concurrency, self.max_characters = work, concurrency, max_characters
        self.sent: collections.Counter = collections.Counter()
        self.paid_sent = 0
        self.budget_hit = False
        self.error: UserError | None = None

    def _submit_next(self, pool, pending: dict, it) -> bool:
        for lang, b, batch in it:
            n = sum(len(t) for t in batch)
            if b.paid and self.max_characters is not None and self.paid_sent + n > self.max_characters:
                if not self.budget_hit:
                    log.warning("translate.max_characters: budget of %d characters reached (%d sent); "
                                "stopping machine translation, the rest stays missing",
                                self.max_characters, self.paid_sent)
                self.budget_hit = True
                return False
            if b.paid:
                self.paid_sent += n
            pending[pool.submit(b.translate, batch, lang)] = (lang, b, batch)
            return True
        return False

    def run(self, on_result) -> None:
        total_chars = sum(len(t) for _, _, batch in self.work for t in batch)
        with tqdm(total=total_chars, desc="machine translation", unit="char", unit_scale=True,
                  disable=not self.work) as bar, cf.ThreadPoolExecutor(self.concurrency) as pool:
            pending: dict[cf.Future, tuple[str, Backend, list[str]]] = {}
            it = iter(self.work)
            stop = False
            for _ in range(self.concurrency):
                if not self._submit_next(pool, pending, it):
                    break
            try:
                while pending:
                    done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                    for fut in done:
                        lang, b, batch = pending.pop(fut)
                        try:
                            results = fut.result()
                        except UserError as exc:
                            self.error = self.error or exc
                            stop = True
                            continue
                        n = sum(len(t) for t in batch)
                        self.sent[lang] += n
                        bar.update(n)
                        on_result(lang, b, batch, results)
                        if not stop:
                            self._submit_next(pool, pending, it)
            except BaseException:
                for fut in pending:
                    fut.cancel()
                raise
