"""A picture of ranked lists: each query followed by its top-k gallery matches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..datasets.image_dataset import read_image
from ..metrics.rank import JUNK_PID

__all__ = ["ranked_list", "plot_ranked_lists", "COLOURS"]

COLOURS = {"query": (40, 90, 220), "correct": (20, 170, 60), "wrong": (220, 30, 30),
           "distractor": (150, 150, 150), "unlabelled": (90, 90, 90)}
HEADER = 44  # pixels above the first row: the title and the legend


def ranked_list(dist_row, q_pid, q_camid, g_pids, g_camids):
    """Gallery indices sorted by distance, with the protocol's junk removed (same identity and
    camera as the query, and identity -1); ties keep the gallery order."""
    order = np.argsort(np.asarray(dist_row), kind="stable")
    junk = ((g_pids[order] == q_pid) & (g_camids[order] == q_camid)) | (g_pids[order] == JUNK_PID)
    return order[~junk]


def plot_ranked_lists(distmat, query, gallery, out_path, topk=10, num_queries=8, query_indices=None,
                      seed=0, cell=(128, 64), title=None, distractor_pid=None):
    """Draw ``num_queries`` queries (rows) and their ``topk`` gallery matches to a PNG.

    ``query`` and ``gallery`` are lists of ``(path, pid, camid)`` (camid counted from 0; drawn
    from 1, as in the file names). Frames: the query blue, a correct match (same identity) green,
    a wrong match red, a distractor (identity ``distractor_pid``, e.g. Market-1501's 0) grey;
    a legend and ``title`` head the picture. Under each image: its rank, identity, camera and
    distance. Queries are ``query_indices``, or drawn with ``seed``. Returns the path written.

    Unlabelled images (``pid`` None, e.g. ``sharpattn-search`` on your own folders): the whole
    gallery is ranked by distance (no junk rules), matches get a dark grey frame, and under each
    image are its rank, distance and file name.
    """
    d = distmat.detach().cpu().numpy() if isinstance(distmat, torch.Tensor) else np.asarray(distmat)
    if d.shape != (len(query), len(gallery)):
        raise ValueError(f"distmat {d.shape} does not match {len(query)} queries x {len(gallery)} gallery items")
    labelled = all(p is not None for _, p, _ in list(query) + list(gallery))
    g_pids = np.array([p for _, p, _ in gallery])
    g_cams = np.array([c for _, _, c in gallery])
    if query_indices is None:
        rng = np.random.default_rng(seed)
        query_indices = np.sort(rng.choice(len(query), size=min(num_queries, len(query)), replace=False))
    ch, cw = cell
    pad, frame, text_h, gap, head = 6, 4, 40, 16, HEADER
    font = ImageFont.load_default()
    col_w = cw + 2 * pad
    kinds = ("query", "correct", "wrong", "distractor") if labelled else ("query", "unlabelled")
    legend = [(name, 30 + 7 * len(name)) for name in kinds]
    width = max(col_w * (topk + 1) + gap, 2 * pad + sum(w for _, w in legend))
    row_h = ch + 2 * pad + text_h
    canvas = Image.new("RGB", (width, head + row_h * len(query_indices)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 4), title or "ranked lists", fill=(0, 0, 0), font=font)
    x = pad
    for name, w in legend:
        draw.rectangle([x, 22, x + 14, 34], fill=COLOURS[name])
        draw.text((x + 19, 23), name, fill=(0, 0, 0), font=font)
        x += w

    def put(path, x, y, colour, lines):
        img = read_image(path).resize((cw, ch))
        draw.rectangle([x - frame, y - frame, x + cw + frame - 1, y + ch + frame - 1], fill=colour)
        canvas.paste(img, (x, y))
        for k, line in enumerate(lines):
            draw.text((x, y + ch + frame + 1 + 11 * k), line, fill=(0, 0, 0), font=font)

    for row, qi in enumerate(query_indices):
        y = head + row * row_h + pad
        qpath, qpid, qcam = query[qi]
        if not labelled:
            put(qpath, pad, y, COLOURS["query"], ["query", _short(qpath, cw)])
            order = np.argsort(d[qi], kind="stable")[:topk]
        else:
            put(qpath, pad, y, COLOURS["query"], ["query", f"id {qpid}", f"cam {qcam + 1}"])
            order = ranked_list(d[qi], qpid, qcam, g_pids, g_cams)[:topk]
        for k, gi in enumerate(order):
            gpath, gpid, gcam = gallery[gi]
            if not labelled:
                x = gap + col_w * (k + 1) + pad
                put(gpath, x, y, COLOURS["unlabelled"], [f"#{k + 1}", f"d={d[qi, gi]:.4g}", _short(gpath, cw)])
                continue
            kind = "correct" if gpid == qpid else \
                "distractor" if distractor_pid is not None and gpid == distractor_pid else "wrong"
            x = gap + col_w * (k + 1) + pad
            put(gpath, x, y, COLOURS[kind], [f"#{k + 1} id {gpid}", f"cam {gcam + 1}", f"d={d[qi, gi]:.4g}"])
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out_path)
    return out_path


def _short(path, width_px):
    """The file name, cut to what fits under an image ``width_px`` wide (6 px per character)."""
    name, room = Path(path).name, max(4, width_px // 6)
    return name if len(name) <= room else name[:room - 2] + ".."
