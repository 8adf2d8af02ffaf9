"""``mine.rounds: 2``: train the first half of the rows, mine the second half again with
that model, accumulate; resumable (docs/negatives.md)."""
from __future__ import annotations

import io
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
from sentence_transformers import SentenceTransformerTrainer

from hpo_embed.checkpoints import last_complete_checkpoint
from hpo_embed.common import UserError, atomic_write_bytes, write_json
from hpo_embed.models.loader import load_sentence_transformer
from hpo_embed.negatives.dataset import mined_examples
from hpo_embed.negatives.mining import Corpus, mine
from hpo_embed.ontology.graph import IsAGraph
from hpo_embed.params import MineParams
from hpo_embed.training.losses import build_loss

log = logging.getLogger("hpo_embed.negatives")



def split_halves(n_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of round 1 and round 2: a seeded half each, every row trained exactly once."""
    perm = np.random.default_rng([seed, 2]).permutation(n_rows)
    h = n_rows // 2
    return np.sort(perm[:h]), np.sort(perm[h:])


def accumulate(round1: pd.DataFrame, round2: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Round-2 rows: half keep their base-model negatives (round 1), half take the negatives
    mined with the round-1 model (seeded); easy columns unchanged."""
    out = round2.copy()
    keep = np.random.default_rng([seed, 3]).random(len(out)) < 0.5
    for c in [c for c in round2.columns if c.startswith("negative_")]:
        out[c] = np.where(keep, round1[c].to_numpy(), round2[c].to_numpy())
    out["round"] = np.where(keep, 1, 2)
    return out


def round_one(negs: pd.DataFrame, hn: MineParams, p, fingerprint: str, folder: Path,
              load_model: Callable[[], Any], make_args: Callable[[str, list], Any],
              mining_data: Callable[[], tuple[Corpus, dict, IsAGraph]]) -> tuple[pd.DataFrame, dict, dict]:
    """Round 1 of ``mine.rounds: 2`` and the round-2 mining; returns ``(round-2 rows with
    accumulated negatives, round-1 model state_dict, info)``. The train stage then trains
    the round-2 rows from that state (its own checkpoints and resume as usual).

    Resumable, in ``folder`` (= models/checkpoints/round1): ``run.json`` (fingerprint; a
    different one clears the folder), ``checkpoints/`` (the Trainer's, resumed inside round
    1), ``model/`` + ``done.json`` (round 1 finished: never trained again) and
    ``negatives_round2.parquet`` (written atomically: never mined again)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("params.yaml: mine.rounds: 2 runs in one process; launch without torchrun/accelerate "
                        "or set mine.rounds: 1")
    folder = Path(folder)
    run_file = folder / "run.json"
    if folder.is_dir() and (not p.resume or not run_file.is_file()
                            or json.loads(run_file.read_text()).get("fingerprint") != fingerprint):
        log.warning("round 1: %s, clearing %s", "train.resume is false" if not p.resume else
                    "params or inputs changed", folder)
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not run_file.is_file():
        write_json(run_file, {"fingerprint": fingerprint})
    r1_rows, r2_rows = split_halves(len(negs), hn.seed)
    info: dict[str, Any] = {"round1_rows": len(r1_rows), "round2_rows": len(r2_rows)}
    done, model_dir = folder / "done.json", folder / "model"
    if done.is_file():
        info |= json.loads(done.read_text()) | {"round1_resumed": "skipped (done)"}
        log.info("round 1 already done (%s): not trained again", done)
    else:
        t = time.time()
        model = load_model()
        ds, keys, _ = mined_examples(negs.iloc[r1_rows].reset_index(drop=True), p, hn)
        ckpt = folder / "checkpoints"
        last = last_complete_checkpoint(ckpt, clean=True) if p.resume and ckpt.is_dir() else None
        trainer = SentenceTransformerTrainer(model=model, args=make_args(str(ckpt), keys), train_dataset=ds,
                                             loss=build_loss(model, p, mined=hn))
        log.info("round 1: training %d rows%s", len(ds), f" (resuming {last.name})" if last else "")
        trainer.train(resume_from_checkpoint=str(last) if last else None)
        tmp = folder / "model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        trainer.model.save(str(tmp), create_model_card=False)
        shutil.rmtree(model_dir, ignore_errors=True)
        tmp.rename(model_dir)
        info |= {"round1_steps": int(trainer.state.global_step), "round1_train_s": round(time.time() - t, 1)}
        write_json(done, {k: v for k, v in info.items() if k.startswith("round1_")})
        shutil.rmtree(ckpt, ignore_errors=True)
        del trainer, model
    r1_model = load_sentence_transformer(model_dir, str(model_dir))
    mined_file = folder / "negatives_round2.parquet"
    part = negs.iloc[r2_rows].reset_index(drop=True)
    if mined_file.is_file():
        round2 = pd.read_parquet(mined_file)
        info["round2_mining"] = "reused"
    else:
        corpus, texts, onto = mining_data()
        round2, report = mine(part[["anchor", "positive", "hpo_id"]], corpus, texts, onto, hn,
                              model=r1_model, round_no=2)
        buf = io.BytesIO()
        round2.to_parquet(buf, index=False)
        atomic_write_bytes(mined_file, buf.getvalue())
        info["round2_mining"] = {k: report[k] for k in ("by_source", "guard_removed", "margin_removed", "seconds")}
    state = {k: v.detach().clone() for k, v in r1_model.state_dict().items()}
    del r1_model
    return accumulate(part, round2, hn.seed), state, info
