"""Where does ``winner``'s m_vIoU go? A diagnostic probe on the generated VidSTG (val split).

    PYTHONPATH=. .venv/bin/python bench/winner_probe.py LR EPOCHS NTRAIN ['{"svhu": false}'] [ROOT]

Trains ``winner`` at its PAPER + FIXED point (plus the JSON overrides, LR replacing the learning
rate) on NTRAIN train sentences (0 = all) for EPOCHS epochs, one thread, and prints per epoch (and
at init): m_vIoU and m_tIoU; the mean predicted and GT segment lengths; the fraction of predicted
frames inside the GT; the AUC of TL-1's single-frame scores for GT against other frames; a random
linked tube over the model's own segment; with the GT segment given, the model's tube, a random
tube (expectation) and the best tube; the whole video; ``tl1_select=above_mean`` at test time;
and the same with the fusion switched off at test time (``svhu=False``). Numbers in the
``winner.py`` docstring came from this script.
"""
import dataclasses, sys, time, json, os
import numpy as np, torch
sys.path.insert(0, os.getcwd())
from grounding import engine, tasks
from grounding.data.shards import Dataset
from grounding.models import registry
from grounding.metrics.tube import sample_viou
from grounding.metrics.wsvog import box_iou
import search_spaces

torch.set_num_threads(1)
ROOT = sys.argv[5] if len(sys.argv) > 5 else "data/vidstg"
TIOU = "grid"  # m_tIoU counted on the sampled frames, the form the winner.py numbers were measured with


class Sub:
    def __init__(self, a, n, seed=0):
        self.a = a
        self.idx = np.sort(np.random.default_rng(seed).permutation(len(a))[:n]) if n and n < len(a) else np.arange(len(a))
    def __len__(self):
        return len(self.idx)
    def batch(self, idx, device="cpu"):
        return self.a.batch(self.idx[np.asarray(idx)], device)


def params(extra):
    mod = search_spaces.load("winner")
    merged = {**mod.PAPER, **mod.FIXED, **extra}
    f = registry.config_fields("winner")
    return {k: v for k, v in merged.items() if k in f}, engine.OptimConfig(**{k: v for k, v in merged.items() if k in engine.OPTIM_KEYS})


@torch.no_grad()
def diag(model, data, tag, also=True):
    model.eval()
    trained = model.cfg
    if also and trained.svhu:
        model.cfg = dataclasses.replace(trained, svhu=False)
        diag(model, data, tag + " TEST-TIME svhu=False", also=False)
        model.cfg = trained
    rows = {k: [] for k in ["viou", "tiou", "plen", "glen", "nv", "auc", "viou_rt", "orc_viou", "orc_rt", "orc_best",
                            "full_viou", "am_viou", "am_tiou", "am_plen", "cover"]}
    for i in range(0, len(data), 64):
        b = data.batch(np.arange(i, min(i + 64, len(data))))
        fv, gtv = b["frame_valid"].bool(), b["gt_box_valid"].bool() & b["frame_valid"].bool()
        p = model.predict(b)
        v, t = sample_viou(p["segment"], p["proposal"], b["boxes"], b["gt_boxes"], gtv, fv, tiou=TIOU)
        rows["viou"] += v.tolist(); rows["tiou"] += t.tolist()
        seg = p["segment"]
        rows["plen"] += (seg[:, 1] - seg[:, 0]).tolist()
        rows["glen"] += gtv.sum(1).tolist(); rows["nv"] += fv.sum(1).tolist()
        # tube IoU per frame [B, M, T]
        tubes = b["tubes"].clamp(min=0)
        B, M, T = tubes.shape
        bx = b["boxes"].double()
        tb = torch.gather(bx, 2, tubes.transpose(1, 2)[..., None].expand(B, T, M, 4))  # [B,T,M,4]
        tiou = box_iou(tb, b["gt_boxes"].double()[:, :, None, :])  # [B,T,M]
        tt = torch.arange(T)
        pred = (tt[None] >= seg[:, :1]) & (tt[None] < seg[:, 1:]) & fv
        un = (pred | gtv).sum(1).clamp(min=1).double()
        rows["viou_rt"] += ((tiou * (pred & gtv)[..., None]).sum(1).mean(1) / un).tolist()  # random tube, own segment
        rows["cover"] += ((pred & gtv).sum(1).double() / pred.sum(1).clamp(min=1)).tolist()
        # single-frame TL-1 scores: AUC of sigma_t for GT frames (within valid frames)
        if trained.temporal == "tl1":
            e = model.encode(b)
            q = model.summary(e)
            u = model.frame_proj(b["frame_feats"])
            sf = (torch.nn.functional.normalize(u, dim=-1) * q[:, None]).sum(-1)
            for k in range(B):
                pos, neg = sf[k][gtv[k]], sf[k][fv[k] & ~gtv[k]]
                if len(pos) and len(neg):
                    rows["auc"].append(float((pos[:, None] > neg[None]).double().mean()))
        # oracle segment at test time
        model.cfg = dataclasses.replace(trained, temporal="oracle")
        po = model.predict(b)
        vo, _ = sample_viou(po["segment"], po["proposal"], b["boxes"], b["gt_boxes"], gtv, fv, tiou=TIOU)
        rows["orc_viou"] += vo.tolist()
        ng = gtv.sum(1).clamp(min=1).double()
        per_tube = (tiou * gtv[..., None]).sum(1) / ng[:, None]  # [B, M]
        rows["orc_rt"] += per_tube.mean(1).tolist(); rows["orc_best"] += per_tube.max(1).values.tolist()
        model.cfg = dataclasses.replace(trained, temporal="full")
        pf = model.predict(b)
        rows["full_viou"] += sample_viou(pf["segment"], pf["proposal"], b["boxes"], b["gt_boxes"], gtv, fv, tiou=TIOU)[0].tolist()
        if trained.temporal == "tl1":
            model.cfg = dataclasses.replace(trained, tl1_select="above_mean")
            pa = model.predict(b)
            va, ta = sample_viou(pa["segment"], pa["proposal"], b["boxes"], b["gt_boxes"], gtv, fv, tiou=TIOU)
            rows["am_viou"] += va.tolist(); rows["am_tiou"] += ta.tolist()
            rows["am_plen"] += (pa["segment"][:, 1] - pa["segment"][:, 0]).tolist()
        model.cfg = trained
    m = {k: float(np.mean(v)) if v else float("nan") for k, v in rows.items()}
    print(f"[{tag}] m_vIoU {m['viou']:.4f} m_tIoU {m['tiou']:.4f} | pred len {m['plen']:.1f} GT len {m['glen']:.1f} "
          f"valid {m['nv']:.1f} frac-pred-in-GT {m['cover']:.2f} | frame AUC {m['auc']:.3f} | random tube on own seg {m['viou_rt']:.4f} | "
          f"oracle seg: pred tube {m['orc_viou']:.4f} random tube {m['orc_rt']:.4f} best tube {m['orc_best']:.4f} | "
          f"full: {m['full_viou']:.4f} | above_mean: vIoU {m['am_viou']:.4f} tIoU {m['am_tiou']:.4f} len {m['am_plen']:.1f}",
          flush=True)
    return m


def main():
    lr = float(sys.argv[1]); epochs = int(sys.argv[2]); ntrain = int(sys.argv[3]); extra = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    data = tasks.load(Dataset.open(ROOT), splits=("train", "val"))
    tr, va = Sub(data["train"], ntrain), Sub(data["val"], 0)
    p, opt_cfg = params({"lr": lr, **extra})
    print("params", p, opt_cfg.lr, opt_cfg.batch_size, "train", len(tr), "val", len(va), flush=True)
    engine.seed_everything(0)
    model = registry.build("winner", p, data.info)
    opt = engine.make_optimizer(model, opt_cfg)
    diag(model, va, f"lr {lr} epoch -1 (init)")
    for ep in range(epochs):
        t0 = time.time()
        logs = engine.train_one_epoch(model, opt, tr, opt_cfg, ep, 0)
        print({k: round(v, 4) for k, v in logs.items()}, f"{time.time() - t0:.0f}s", flush=True)
        diag(model, va, f"lr {lr} epoch {ep}")


if __name__ == "__main__":
    main()
