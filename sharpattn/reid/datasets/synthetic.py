"""A small synthetic re-ID dataset written in Market-1501's layout.

Every person has the same build and wears one of a few shared outfits, so identities can only
be told apart by a small cue: a badge on the chest or a bag at the hip, with an identity-specific
colour and pattern (and side). Cameras differ in background, lighting, the person's scale, crop
jitter and how often something occludes the person: a model has to find the cue and ignore the
camera, which is the point of an attention model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["make_synthetic"]

# Badge/bag colours (RGB) and patterns; identities take distinct (colour, pattern, place)
# combinations.
_CUE_COLOURS = np.array([
    [220, 30, 30], [30, 160, 40], [40, 70, 220], [235, 200, 20], [200, 40, 200],
    [20, 200, 210], [250, 130, 20], [250, 250, 250], [20, 20, 20], [140, 80, 30],
], dtype=np.float32)
_PATTERNS = ("solid", "hstripes", "vstripes", "checker")
_PLACES = ("chest_left", "chest_right", "hip_bag")
# Shared outfits: (shirt, trousers).
_OUTFITS = np.array([
    [[90, 95, 110], [40, 40, 50]],
    [[150, 130, 110], [50, 55, 80]],
    [[70, 90, 80], [60, 50, 45]],
], dtype=np.float32)
_SKIN = np.array([205, 165, 135], dtype=np.float32)


def _pattern_mask(pattern, h, w):
    yy, xx = np.mgrid[0:h, 0:w]
    if pattern == "solid":
        return np.ones((h, w), bool)
    if pattern == "hstripes":
        return (yy // 2) % 2 == 0
    if pattern == "vstripes":
        return (xx // 2) % 2 == 0
    return ((yy // 2) + (xx // 2)) % 2 == 0


def _camera_styles(num_cams, rng):
    styles = []
    for _ in range(num_cams):
        styles.append({
            "bg": rng.uniform(60, 200, size=3).astype(np.float32),
            "bg_stripe": rng.uniform(-40, 40, size=3).astype(np.float32),
            "stripe_period": int(rng.integers(6, 20)),
            "gain": rng.uniform(0.7, 1.25, size=3).astype(np.float32),  # colour cast + brightness
            "scale": float(rng.uniform(0.72, 0.95)),  # person height / image height
            "occlusion_p": float(rng.uniform(0.1, 0.4)),
        })
    return styles


def _render(ident, style, h, w, rng, cue_scale=1.0):
    img = np.empty((h, w, 3), np.float32)
    # Background: camera colour with diagonal stripes (a floor / wall texture).
    yy, xx = np.mgrid[0:h, 0:w]
    stripe = ((yy + xx) // style["stripe_period"]) % 2
    img[:] = style["bg"] + stripe[..., None] * style["bg_stripe"]

    # Person box, scaled per camera and jittered per image (imperfect detections).
    ph = int(h * style["scale"] * rng.uniform(0.95, 1.05))
    pw = max(8, int(ph * 0.38))
    top = int(np.clip((h - ph) // 2 + rng.integers(-h // 16, h // 16 + 1), 0, max(0, h - ph)))
    left = int(np.clip((w - pw) // 2 + rng.integers(-w // 10, w // 10 + 1), 0, max(0, w - pw)))
    shirt, trousers = ident["clothes"] if "clothes" in ident else _OUTFITS[ident["outfit"]]
    head_h, torso_h = int(ph * 0.16), int(ph * 0.38)
    cx = left + pw // 2
    # Head: an ellipse.
    hy, hx = top + head_h // 2, cx
    ry, rx = max(2, head_h // 2), max(2, pw // 4)
    head = ((yy - hy) / ry) ** 2 + ((xx - hx) / rx) ** 2 <= 1
    img[head] = _SKIN
    t0, t1 = top + head_h, top + head_h + torso_h
    img[t0:t1, left:left + pw] = shirt
    l0, l1 = t1, min(h, top + ph)
    gap = max(1, pw // 8)
    img[l0:l1, left:cx - gap // 2] = trousers
    img[l0:l1, cx + gap // 2 + 1:left + pw] = trousers

    # The identity cue; a mirrored view (person seen from the other side) swaps left/right.
    place = ident["place"]
    if rng.random() < 0.5 and place != "hip_bag":
        place = "chest_right" if place == "chest_left" else "chest_left"
    if place == "hip_bag":
        ch, cw = max(4, int(ph * 0.16 * cue_scale)), max(4, int(pw * 0.45 * cue_scale))
        cy0 = t1 - ch // 2
        side = rng.random() < 0.5
        cx0 = left - cw // 2 if side else left + pw - cw // 2
    else:
        ch, cw = max(3, int(ph * 0.10 * cue_scale)), max(3, int(pw * 0.32 * cue_scale))
        cy0 = t0 + int(torso_h * 0.2)
        cx0 = left + 2 if place == "chest_left" else left + pw - cw - 2
    cy0, cx0 = max(0, cy0), max(0, cx0)
    cy1, cx1 = min(h, cy0 + ch), min(w, cx0 + cw)
    if cy1 > cy0 and cx1 > cx0:
        mask = _pattern_mask(ident["pattern"], cy1 - cy0, cx1 - cx0)
        region = img[cy0:cy1, cx0:cx1]
        region[mask] = ident["colour"]
        region[~mask] = 0.5 * ident["colour"] + 0.5 * shirt

    # Occluder: a pole or a passer-by's shape covering part of the body.
    if rng.random() < style["occlusion_p"]:
        ow = int(rng.integers(w // 8, w // 3))
        ox = int(rng.integers(0, w - ow))
        oy = int(rng.integers(h // 3, h - h // 6))
        img[oy:, ox:ox + ow] = rng.uniform(30, 220, size=3).astype(np.float32)

    # Lighting and sensor noise.
    img = img * style["gain"] * rng.uniform(0.9, 1.1)
    img += rng.normal(0, 6, size=img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _identities(num_ids, rng):
    combos = [(c, p, pl) for c in range(len(_CUE_COLOURS)) for p in range(len(_PATTERNS))
              for pl in range(len(_PLACES))]
    if num_ids > len(combos):
        raise ValueError(f"num_ids={num_ids}: at most {len(combos)} distinct identities can be drawn")
    order = rng.permutation(len(combos))[:num_ids]
    out = []
    for k in order:
        c, p, pl = combos[k]
        out.append({"colour": _CUE_COLOURS[c], "pattern": _PATTERNS[p], "place": _PLACES[pl],
                    "outfit": int(rng.integers(len(_OUTFITS)))})
    return out


def _fresh_test_identities(idents, num_train, outfits, seed, rng):
    """New test identities for a test draw: cue combinations that no training identity has, each
    dressed as the draw-0 test identity in its place (shared outfit from ``rng``, or own outfit
    ``k mod outfits``)."""
    taken = {(tuple(i["colour"]), i["pattern"], i["place"]) for i in idents[:num_train]}
    free = [(c, p, pl) for c in range(len(_CUE_COLOURS)) for p in range(len(_PATTERNS))
            for pl in range(len(_PLACES))
            if (tuple(_CUE_COLOURS[c]), _PATTERNS[p], _PLACES[pl]) not in taken]
    need = len(idents) - num_train  # <= len(free): a dataset never has more identities than combinations
    fresh = [{"colour": _CUE_COLOURS[c], "pattern": _PATTERNS[p], "place": _PLACES[pl],
              "outfit": int(rng.integers(len(_OUTFITS)))}
             for c, p, pl in (free[k] for k in rng.permutation(len(free))[:need])]
    if outfits is not None:
        dressed = [dict(i) for i in idents[:num_train]] + fresh  # positions decide the outfit
        _own_outfits(dressed, outfits, seed)
    return fresh


def _own_outfits(idents, num_outfits, seed):
    """Give identities ``num_outfits`` random (shirt, trousers) colours, from their own stream
    (so the rest of the dataset is drawn exactly as without them)."""
    orng = np.random.default_rng([seed, 7919])
    shirts = orng.uniform(30, 235, size=(num_outfits, 3)).astype(np.float32)
    trousers = orng.uniform(20, 120, size=(num_outfits, 3)).astype(np.float32)
    for k, ident in enumerate(idents):
        j = k % num_outfits
        ident["clothes"] = (shirts[j], trousers[j])


def make_synthetic(root, num_ids=100, num_cams=4, cams_per_id=None, images_per_cam=(2, 4),
                   height=128, width=64, num_distractors=20, num_junk=5, seed=0, outfits=None,
                   cue_scale=1.0, test_draw=0):
    """Write a synthetic re-ID dataset in Market-1501's layout under ``root`` and return ``root``.

    Identities ``1..num_ids``: the first half train, the second half test. Each identity is seen
    by ``cams_per_id`` cameras (inclusive range, at least 2; default ``(2, num_cams)``), with ``images_per_cam`` images in
    each (at least 2). Test identities give one query per camera; the rest of their images go to
    the gallery, together with ``num_distractors`` distractors (identity 0: people with random
    cues) and ``num_junk`` junk images (identity -1: background only). Read it back with
    ``Market1501(root)``. The same arguments always write the same files.

    Easier variants (for demos that must learn in minutes): ``outfits=n`` dresses identity k in
    the (k mod n)-th of n random outfits instead of the three shared ones (``n = num_ids``: every
    identity has its own clothes; smaller n: identities sharing clothes still differ only by
    their cue); ``cue_scale`` enlarges the badge or bag. The defaults write the hard dataset.

    ``test_draw=d > 0`` writes the same training images (byte for byte) and cameras with a fresh
    test half: new identities (cue combinations no training identity has, dressed as draw 0's
    test identities are), their queries, gallery, distractors and junk, from a random stream of
    their own. A model trained on draw 0 can then be scored on many test sets of the same size
    and difficulty, which resolves differences that one small test set cannot.
    """
    from PIL import Image

    if cams_per_id is None:
        cams_per_id = (2, num_cams)
    if num_ids < 2:
        raise ValueError(f"num_ids must be >= 2 (one train and one test identity), got {num_ids}")
    if not 2 <= cams_per_id[0] <= cams_per_id[1] <= num_cams:
        raise ValueError(f"cams_per_id={cams_per_id} must satisfy 2 <= lo <= hi <= num_cams={num_cams}")
    if not 2 <= images_per_cam[0] <= images_per_cam[1]:
        raise ValueError(f"images_per_cam={images_per_cam} must satisfy 2 <= lo <= hi")
    if test_draw < 0:
        raise ValueError(f"test_draw must be >= 0, got {test_draw}")
    if height < 32 or width < 16:
        raise ValueError(f"images must be at least 32x16, got {height}x{width}")

    root = Path(root)
    dirs = {k: root / k for k in ("bounding_box_train", "bounding_box_test", "query")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    styles = _camera_styles(num_cams, rng)
    idents = _identities(num_ids, rng)
    if outfits is not None:
        if outfits < 1:
            raise ValueError(f"outfits must be >= 1 (or None for the shared ones), got {outfits}")
        _own_outfits(idents, outfits, seed)
    if not cue_scale > 0:
        raise ValueError(f"cue_scale must be > 0, got {cue_scale}")
    frame = 0

    def save(folder, pid, cam, img):
        nonlocal frame
        frame += 1
        name = f"{pid:04d}" if pid >= 0 else str(pid)
        Image.fromarray(img).save(folder / f"{name}_c{cam + 1}s1_{frame:06d}_00.jpg", quality=95)

    num_train = num_ids // 2

    def render_identity(pid, ident, rng):
        n_cams = int(rng.integers(cams_per_id[0], cams_per_id[1] + 1))
        cams = sorted(rng.choice(num_cams, size=n_cams, replace=False).tolist())
        for cam in cams:
            n = int(rng.integers(images_per_cam[0], images_per_cam[1] + 1))
            for i in range(n):
                img = _render(ident, styles[cam], height, width, rng, cue_scale)
                if pid <= num_train:
                    save(dirs["bounding_box_train"], pid, cam, img)
                else:
                    save(dirs["query"] if i == 0 else dirs["bounding_box_test"], pid, cam, img)

    if test_draw:  # training identities drawn and rendered as in draw 0, the test half afresh
        for k, ident in enumerate(idents[:num_train]):
            render_identity(k + 1, ident, rng)
        rng = np.random.default_rng([seed, 104729, test_draw])
        idents = idents[:num_train] + _fresh_test_identities(idents, num_train, outfits, seed, rng)
        for k in range(num_train, num_ids):
            render_identity(k + 1, idents[k], rng)
    else:  # one stream for everything: the files of every dataset written before test_draw existed
        for k, ident in enumerate(idents):
            render_identity(k + 1, ident, rng)
    extra = _identities(min(num_distractors, 120), rng) if num_distractors else []
    if outfits is not None and extra:
        _own_outfits(extra, len(extra), seed + 1)
    for i in range(num_distractors):
        cam = int(rng.integers(num_cams))
        save(dirs["bounding_box_test"], 0, cam,
             _render(extra[i % len(extra)], styles[cam], height, width, rng, cue_scale))
    for _ in range(num_junk):
        cam = int(rng.integers(num_cams))
        empty = {"colour": styles[cam]["bg"], "pattern": "solid", "place": "chest_left", "outfit": 0}
        img = _render(empty, styles[cam], height, width, rng)
        save(dirs["bounding_box_test"], -1, cam, img)
    return root
