"""The official HPO translations: the pinned Babelon files (downloaded once, sha256-checked) or
a local folder, read per language."""
from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from hpo_embed.common import ROOT, log
from hpo_embed.ontology.source import download
from hpo_embed.params import TranslateParams
from hpo_embed.translation import babelon

# The pinned official files: obophenotype/hpo-translations, babelon/, at this commit.
# (hp-cs/nl/tr .babelon.tsv are over 4 MiB and not pinned; their synonym files are.)
PINNED_COMMIT = "62f1d254f93e47d87e874783019ccd7480400e76"


PINNED_BASE_URL = f"https://raw.githubusercontent.com/obophenotype/hpo-translations/{PINNED_COMMIT}/babelon/"


PINNED_FOLDER = f"hpo-translations-{PINNED_COMMIT[:12]}"   # inside the downloads folder


PINNED_FILES = {
    "hp-cs.synonyms.tsv": "c2bbe8e5254daaf2fdec59bf895e0488d02db648575e7de751a237bb6f41eefa",
    "hp-de.babelon.tsv": "bda90165c9f0e1688b0daa02625028cbc2410950ed7637ebb8e09a388a113c7c",
    "hp-de.synonyms.tsv": "488e9e1fcbbff66cd99927dc2fda0518bd506558ca068f61b4839d89acee1430",
    "hp-es.babelon.tsv": "00972e33775a0340ad7b45620f0ff1d2794766c45beb937a165ee86e6f16ed9a",
    "hp-fr.babelon.tsv": "6a2c28bb381769583ebcdfd6901d1e99d3a3fda29b1ff052e69f965ad72398ad",
    "hp-fr.synonyms.tsv": "bb94699ec496161cad0813b22d00a3db1394b971605f246dd8d452d9655c5454",
    "hp-it.babelon.tsv": "4349bde8befa25309cba295d6928234f7ef58bd8903c87778abe6cac0962ae21",
    "hp-it.synonyms.tsv": "426e6e6683be1850585568d245ecc2366dcaa0600ddd1a96c729ba6c7a6f57de",
    "hp-ja.babelon.tsv": "cefe15af19d988598eee0077cc75e2d488837adb746522f4cb5d1312fc343eea",
    "hp-nl.synonyms.tsv": "40cf0538d436125cc7c6205d4966c5b57f6f3244288e33eeb94686f6545166a4",
    "hp-pt.babelon.tsv": "31f642ef8f6951287d9386d3b3454990504143520161ef4615c1c5c0ed85ebd0",
    "hp-tr.synonyms.tsv": "5981fbbcf236b3c25ec38517cc8e2efa360ac3bad3c28945f6170bb83b3ffb54",
    "hp-zh.babelon.tsv": "64a30d5f065e1180fa6a30c192dd84aa403cd1b44f2b24ee883fcde948b1ca53",
}


ADD_TRANSLATIONS_HINT = ("run `make fetch-translations` (downloads the pinned official files into "
                         "data/external/hpo-translations), or `dvc exp run -S translate.official=pinned`, "
                         "or point translate.official at a folder of Babelon TSVs")


def fetch_pinned(dest: Path, languages: list[str] | None = None,
                 base_url: str | None = None, timeout: float = 60.0) -> Path:
    """Download the pinned official files (of ``languages``, default all) once into
    ``dest``; each is checked against its SHA-256 and written atomically."""
    base_url = base_url or PINNED_BASE_URL
    names = [n for n in PINNED_FILES if languages is None or n.split(".")[0][3:] in languages]
    for name in tqdm(names, desc="official files", unit="file", disable=len(names) < 2):
        download(base_url + name, dest, PINNED_FILES[name], timeout=timeout,
                 param="translate.official", sha_param="translate.official")
    return dest


def resolve_official(params: TranslateParams, downloads: Path | None) -> Path | None:
    """The folder of official files, or None (with one warning) when there is none;
    ``official: pinned`` downloads them once into ``downloads``."""
    if "official" not in params.sources:
        return None
    if params.official == "pinned":
        if downloads is None:
            raise TypeError("translate.official: pinned needs a downloads folder")
        return fetch_pinned(Path(downloads) / PINNED_FOLDER, params.languages)
    folder = Path(params.official).expanduser()
    if not folder.is_absolute():
        folder = ROOT / folder
    if not folder.is_dir():
        log.warning("translate.official: %s not found, so no official translations are used; to add them, %s",
                    params.official, ADD_TRANSLATIONS_HINT)
        return None
    return folder


def official_text(e: babelon.Entry, source_text: str | None, synonym: bool = False) -> dict:
    t = {"text": e.text, "source": "official", "status": e.status, "translator": e.translator,
         "source_text": source_text}
    if synonym:
        t["scope"] = e.scope
        t["type"] = e.type
    return t


def unused_official_ids(off: babelon.OfficialLanguage | None, selected: set[str]) -> int:
    """Ids with an accepted official label, definition or synonym that are not in ``selected``."""
    if off is None:
        return 0
    return len((set(off.labels) | set(off.definitions) | set(off.synonyms)) - selected)
