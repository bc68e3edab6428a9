"""``winner`` on a planted toy: box accuracy and the gradient of each loss term, per configuration.

    PYTHONPATH=. .venv/bin/python bench/winner_toy.py [--steps 150] [--seeds 0 1] [--configs NAME ...]

The toy (issue 23's probe, rebuilt here): each video has ``N`` = 10 linked tubes over ``T`` frames;
one tube carries the prototype of the sentence's subject noun, two distractor tubes carry the
prototypes of two other nouns (one of them named later in the sentence), every tube carries the
video's scene vector (shared by all its tubes) and noise. Sentences have 8 words: filler, SUBJECT,
3 fillers, the distractor's noun, 2 fillers; ``subject_pos`` = 1; the words' GloVe stand-ins are
random 300-d vectors. Box accuracy: the predicted tube is the subject's, on held-out batches
(chance 0.10). Training: Adam at the given lr with grad-clip 5 (the sweep's FIXED value), fresh
batches every step, ``temporal=full`` (the toy has no temporal structure).

Gradient norms: the global L2 norm over all parameters of the gradient of each weighted loss
term (``Winner.terms``: mu l_word, l_phrase, w_rec L_rec) alone, averaged over 4 batches, at
initialisation and after training. ``--random-words`` also reports the word loss per word when the
sentence's words are drawn independently of the video (the fusion shortcut of spec A35).

Configurations (``--configs``): ``before_full``/``before_base`` are the model as it was before
issue 23 (``refuse_negatives=False, chart_scores=average``); ``full``/``base`` the defaults after;
``refuse_only`` and ``chart_only`` each change alone. ``base`` is Table 3's base model
(``dsa=False, svhu=False``). Writes bench/results/winner_toy.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from grounding.models.base import DataInfo  # noqa: E402
from grounding.models.winner import Winner, WinnerConfig  # noqa: E402

V_NOUNS, V_FILL = 20, 40
V = 1 + V_NOUNS + V_FILL
DW, DR, DF, T, N, L = 300, 32, 16, 4, 10, 8
BEFORE = {"refuse_negatives": False, "chart_scores": "average"}
BASE = {"dsa": False, "svhu": False}
CONFIGS = {
    "before_full": BEFORE,
    "before_base": {**BEFORE, **BASE},
    "full": {},
    "base": BASE,
    "refuse_only": {"chart_scores": "average"},
    "chart_only": {"refuse_negatives": False},
}


class Toy:
    """The planted world: word vectors, noun prototypes in region space (fixed per seed)."""

    def __init__(self, seed: int, signal: float = 1.0, scene: float = 1.5, noise: float = 0.5):
        g = np.random.default_rng([seed, 23])
        vectors = g.standard_normal((V, DW)).astype(np.float32)
        vectors[0] = 0
        self.info = DataInfo(task="tube", dims={"T": T, "N": N, "Df": DF, "Dr": DR, "L": L, "R": 1, "P": 1, "M": N},
                             word_vectors=vectors, class_vectors=vectors[1:1 + V_NOUNS])
        proto = torch.as_tensor(g.standard_normal((V_NOUNS, DR)), dtype=torch.float32)
        self.proto = signal * proto / proto.norm(dim=1, keepdim=True)
        self.scene, self.noise = scene, noise

    def batch(self, B: int, seed: int, random_words: bool = False) -> tuple[dict, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        nouns = torch.stack([torch.randperm(V_NOUNS, generator=g)[:3] for _ in range(B)])  # subject, 2 distractors
        slots = torch.stack([torch.randperm(N, generator=g)[:3] for _ in range(B)])
        scene = torch.randn(B, 1, 1, DR, generator=g)
        scene = self.scene * scene / scene.norm(dim=-1, keepdim=True)
        noise = torch.randn(B, T, N, DR, generator=g)
        feats = scene + self.noise * noise / math.sqrt(DR)
        bi = torch.arange(B)
        for k in range(3):
            feats[bi, :, slots[:, k]] += self.proto[nouns[:, k]][:, None]
        tokens = 1 + V_NOUNS + torch.randint(0, V_FILL, (B, L), generator=g)
        tokens[:, 1] = 1 + nouns[:, 0]
        tokens[:, 5] = 1 + nouns[:, 1]
        if random_words:
            tokens = torch.randint(1, V, (B, L), generator=g)
        xy = torch.rand(B, 1, N, 2, generator=g).expand(B, T, N, 2) * 0.6
        boxes = torch.cat([xy, xy + 0.3], -1)
        fv = torch.ones(B, T, dtype=torch.bool)
        batch = {
            "frame_feats": scene[:, 0, :, :DF].expand(B, T, DF) + torch.randn(B, T, DF, generator=g) * 0.1,
            "region_feats": feats, "boxes": boxes, "frame_valid": fv,
            "tokens": tokens, "token_mask": tokens > 0,
            "subject_pos": torch.ones(B, dtype=torch.long), "subject_class": nouns[:, 0],
            "sentence_form": torch.zeros(B, dtype=torch.long),
            "tubes": torch.arange(N)[None, :, None].expand(B, N, T).clone(),
            "gt_segment": torch.tensor([[0, T]] * B), "gt_boxes": boxes[bi, :, slots[:, 0]],
            "gt_box_valid": fv.clone(), "video_index": bi,
        }
        return batch, slots[:, 0]


def grad_norms(m: Winner, batches) -> dict[str, float]:
    params = [p for p in m.parameters() if p.requires_grad]
    out: dict[str, list] = {}
    for b in batches:
        torch.manual_seed(0)
        terms, logs = m.terms(b, count=False)
        for name, t in terms.items():
            if not t.requires_grad:
                continue
            g = torch.autograd.grad(t, params, retain_graph=True, allow_unused=True)
            out.setdefault(name, []).append(float(torch.sqrt(sum((x ** 2).sum() for x in g if x is not None))))
        out.setdefault("pi_max", []).append(logs["pi_max"])
    return {k: float(np.mean(v)) for k, v in out.items()}


@torch.no_grad()
def box_accuracy(m: Winner, toy: Toy, n: int = 8, B: int = 16) -> float:
    m.eval()
    hits = []
    for i in range(n):
        b, subj = toy.batch(B, 90_000 + i)
        hits.append((m.predict(b)["tube"] == subj).float().mean().item())
    m.train()
    return float(np.mean(hits))


@torch.no_grad()
def word_loss_per_word(m: Winner, toy: Toy, B: int, random_words: bool) -> float:
    return float(np.mean([m.terms(toy.batch(B, 80_000 + i, random_words)[0], count=False)[1]["loss_word"] / L
                          for i in range(4)]))


def run(name: str, overrides: dict, seed: int, steps: int, lr: float, B: int, random_words: bool) -> dict:
    toy = Toy(seed)
    torch.manual_seed(seed)
    m = Winner(WinnerConfig(temporal="full", hidden_dim=32, **overrides), toy.info).train()
    opt = torch.optim.Adam(m.parameters(), lr=lr)
    probe = [toy.batch(B, 70_000 + i)[0] for i in range(4)]
    row = {"config": name, "overrides": overrides, "seed": seed, "steps": steps, "lr": lr, "B": B,
           "acc_init": box_accuracy(m, toy), "grad_init": grad_norms(m, probe)}
    if random_words:
        row["random_words_init"] = word_loss_per_word(m, toy, B, True)
    t0 = time.time()
    curve = []
    for step in range(steps):
        b, _ = toy.batch(B, seed * 1_000_000 + step, random_words)
        loss, _ = m(b)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 5.0)
        opt.step()
        if (step + 1) % max(1, steps // 4) == 0 and not random_words:
            curve.append((step + 1, box_accuracy(m, toy, n=4)))
    row["train_s"] = time.time() - t0
    row["curve"] = curve
    if random_words:
        row["random_words_end"] = word_loss_per_word(m, toy, B, True)
        row["log_B"] = math.log(B)
    else:
        row["acc_end"] = box_accuracy(m, toy)
        row["grad_end"] = grad_norms(m, probe)
    print(json.dumps(row), flush=True)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--random-words", action="store_true", help="train on words unrelated to the videos")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "winner_toy.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = [run(c, CONFIGS[c], s, args.steps, args.lr, args.batch, args.random_words)
            for c in args.configs for s in args.seeds]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
