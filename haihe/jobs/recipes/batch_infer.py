"""``batch-infer``: run a zoo model (HAIHE_FROM_ZOO) over a dataset version (HAIHE_DATASET) and write predictions
under HAIHE_OUTPUT_URI.

Inputs: ``.npz`` (array ``x``) or ``.npy`` files, in path order. Rank r of N takes every N-th file; each file's
predictions go to ``predictions/<file path>.jsonl`` (one ``{"row", "prediction", "score"}`` per input row), and
rank 0 writes ``_SUCCESS.json`` (files, rows, model, dataset) once every rank is done. Parameters: batch_size (256).
"""

from __future__ import annotations

import json

from haihe.jobs.runtime.context import JobContext
from haihe.jobs.runtime.contract import DataError
from haihe.jobs.runtime.modes import set_training


def run(ctx: JobContext) -> None:
    import torch

    from haihe.jobs.recipes.arrays import array_files, load_xy

    if ctx.data_dir is None:
        raise DataError("batch-infer needs a dataset version (HAIHE_DATASET)", field="HAIHE_DATASET")
    batch_size = ctx.param("batch_size", 256)
    ctx.log_params({"recipe": "batch-infer", "from_zoo": ctx.env.from_zoo, "dataset": ctx.dataset or "",
                    "batch_size": batch_size, "output": ctx.env.output_uri})  # fmt: skip
    device = ctx.device()
    model = set_training(ctx.source_model(map_location=str(device)).to(device), False)
    files = array_files(ctx.data_dir)
    mine = files[ctx.dist.rank :: ctx.dist.world_size]
    rows = 0
    for path in mine:
        x, _ = load_xy(path, need_y=False)
        lines = []
        with torch.no_grad():
            for start in range(0, len(x), batch_size):
                batch = torch.as_tensor(x[start : start + batch_size], dtype=torch.float32, device=device)
                probs = torch.softmax(model(batch), dim=1)
                score, label = probs.max(dim=1)
                for i, (lab, sc) in enumerate(zip(label.tolist(), score.tolist(), strict=True)):
                    lines.append(json.dumps({"row": start + i, "prediction": lab, "score": round(sc, 6)}))
        rel = path.relative_to(ctx.data_dir).as_posix()
        ctx.write_output(f"predictions/{rel}.jsonl", ("\n".join(lines) + "\n").encode())
        rows += len(x)
    total_rows, total_files = ctx.all_reduce([float(rows), float(len(mine))])
    ctx.log_metrics({"rows": total_rows, "files": total_files})
    if ctx.dist.is_main:
        summary = {"files": int(total_files), "rows": int(total_rows), "model": ctx.env.from_zoo,
                   "dataset": ctx.dataset, "job_id": ctx.env.job_id}  # fmt: skip
        where = ctx.write_output("_SUCCESS.json", json.dumps(summary, sort_keys=True).encode())
        ctx.tracker.set_tags({"haihe.output": where.rsplit("/", 1)[0]})
    ctx.result(rows=rows, files=len(mine), total_rows=int(total_rows))
