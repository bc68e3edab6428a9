"""``winner``: WINNER, weakly-supervised hierarchical decomposition and alignment for
spatio-temporal video grounding (Li et al., CVPR 2023; §3, Eq. 1-21, Algorithm 1).

Task family ``tube`` (the tube batch contract: docs/shards.md, "Tube batches"): from (video, sentence) pairs alone, predict a temporal
segment and one proposal per frame (a tube) for the sentence's subject. **No public WINNER code
exists**, and the paper sends its temporal-localisation module to an appendix that is not public:
the temporal modules below ("TL-2", the default, and "TL-1"; Algorithm 1 Step 3) are this
project's own designs, not the paper's.
Tags: [P] the paper, [I] inferred (mostly from CLIORA/DIORA, the closest public code), [D] a
choice of this project (its label in brackets).

Shapes per batch: ``B`` sentences (each with its own video row), ``L`` words (trimmed to the
longest sentence of the batch), ``C = L (L + 1) / 2`` chart cells, ``M`` tubes, ``T`` frames,
``D`` hidden units.

Chart indexing (DIORA layout): cell(i, j) = offset(l) + i with level ``l = j - i`` and
``offset(l) = sum_{l' < l} (L - l')`` (0-based, inclusive spans): all leaves, then all two-word
spans, and so on (:func:`chart_tables`).

Equations.

* Leaves [I]: ``r_ii = L2norm(tanh(W_leaf x_i))``, ``c_ii = 0`` [P]; ``x_i`` the frozen GloVe row
  of word i (``DataInfo.word_vectors``).
* Inside pass (Eqs. 1-4) [P]: for span (i, j) and split k,
  ``r_ijk = MLP([r_ik; r_k+1,j])`` (Linear-ReLU-Linear-ReLU, CLIORA), ``c_ijk = phi_ijk + c_ik +
  c_k+1,j`` with the rule score ``phi_ijk = r_ik^T W r_k+1,j``; ``r_ij = L2norm(sum_k
  softmax_k(c_ijk) r_ijk)`` (unit normalisation [I], A8) and, ``chart_scores=logsumexp`` [D]
  (default), ``c_ij = logsumexp_k c_ijk``; ``chart_scores=average`` is Eq. 4 as printed (and
  DIORA's/CLIORA's code), ``c_ij = sum_k softmax_k(c_ijk) c_ijk``. See "The chart's scores" below.
* Tubes: ``f_m = W_v mean_t X[t, tube_m(t)] + b_v`` over the valid frames (whole video).
* Structural attention (Eqs. 5-9), computed on the pass-1 (language-only) chart [D] (A9):
  ``a = H1 F^T`` [B, C, M]; related nodes R(i, j) = proper ancestors ``{t <= i, k >= j}`` [D] (A10;
  ``parents=literal`` is the paper's ``{t <= i, k > j}``) plus descendants ``{i <= t <= k <= j}``
  (the node itself included, A11); ``a_hat = mean_{R(i,j)} a`` (A12);
  ``s_c = cos(a_hat(i,j), a(t,k))`` over the tubes; interfering ``I = {s_c < delta}`` (a hard mask
  under no_grad, A13/A16); kept ``K = R \\ I \\ {(i,j)}``;
  ``Att = alpha a_ij + beta sum_K w_tk a_tk`` with ``w_tk ∝ 1 / |(j - i) - (k - t)|`` normalised
  over K (``att_context=inv_dist``, A14; ``mean``: 1/|K|; ``literal``: sum_K a / sum_K |Δ|), 0 for
  empty K; ``f_ij = sum_m softmax_m(Att) f_m`` with dropout on the probabilities [D].
* Fusion and pass 2 (Eq. 10) [D]: ``r~_ii = L2norm(r_ii + lam f_ii)``; the inside pass is repeated
  on r~ children with the same MLP and W and ``r~_ij = L2norm(L2norm(r2_ij) + lam f_ij)``; the
  pass-2 scores ``c^B`` are the ones used downstream.
* Top-down feature backtracking (Eqs. 11-14) [P + I]: root ``r^U = L2norm(u_root)`` (learned),
  ``c^U = 0``; node (i, j) has one context per right-sibling split (parent (i, k), sibling
  (j+1, k)) and per left-sibling split (parent (k, j), sibling (k, i-1)):
  ``r^U_ijk = MLP([r^U_parent; r~_sibling])``; softmax over the ``L - l - 1`` contexts, weighted
  sums, unit normalisation. Context scores: ``chart_scores=logsumexp`` [D] ``c^U_ijk =
  phi(parent -> (i, j), sibling) + c^U_parent + c^B_sibling`` with the inside pass's rule score of
  that split and ``c^U_ij = logsumexp_k c^U_ijk`` (the exact outside score); ``average`` Eq. 12-14
  as printed, ``c^U_ijk = r^U_parent^T W r~_sibling + c^U_parent + c^B_sibling`` and the
  softmax-weighted average. MLP and W shared with the inside pass (``share_inside_outside``, A7;
  unshared under ``logsumexp``, the outside MLP has no W of its own: its scores are the inside's).
* Reconstruction [I] (A23): ``L_rec = mean -log softmax`` of ``(W_rec e(w_i))^T r^U_ii`` against
  ``k_neg`` negatives shared by the batch, drawn ∝ unigram^0.75.
* Temporal localisation TL-1 [D] (A1): ``u_t = LayerNorm(W_f frame_feats_t)``; clips ``(s, e)``
  with ``e - s + 1 >= max(2, round(min_clip T))`` inside the valid frames; ``h_se = L2norm(mean
  u)``; ``pi = exp(min(c^B + c^U - c^B_root, 30))`` (span marginal, A19; the clamp never acts
  with the logsumexp chart, where pi <= 1); ``q = L2norm(sum pi (r~ + r^U) / sum pi)``;
  ``sigma_se = h_se . q``; ``L_tmp = -log softmax_{V'}(max_se sigma(V', S) /
  tau_t) + [gamma_t - sigma_best + sigma_complement]_+``; prediction ``argmax_se sigma``.
  ``temporal=full`` (whole video) and ``temporal=oracle`` (GT segment; diagnostic only: it reads
  the GT at training too) replace it, without L_tmp. ``test_segment`` (prediction time only, so a
  trained model can be read again without retraining: ``python -m orchestration.evaluate run=...
  model.test_segment=full``): ``model`` [default] predicts the segment with the trained
  ``temporal`` module; ``full`` / ``oracle`` decode the same weights over the whole video / the GT
  segment, which splits a gap into its temporal part and its spatial part (the tube choice is
  made over the segment decoded).
* Temporal localisation TL-2 [D] (``temporal=tl2``; this project's second design, from the same
  three ingredients as TL-1 but scored per frame, as ``tubemil``'s temporal branch): frame scores
  ``z_t = L2norm(u_t) . q`` (``u``, ``q`` as TL-1); ``L_tmp`` = InfoNCE over the batch in both
  directions (sentence -> videos and video -> sentences) of ``p(V, S) = tau_t logsumexp_t(z_t /
  tau_t)`` with temperature ``tau_t``; prediction: the run ``[s, e]`` that maximises ``sum_t (z'_t
  - seg_threshold)`` with ``z'`` the video's standardised frame scores
  (:func:`grounding.models.tubemil.best_segment`; the best single frame when no frame clears it).
* TL-1's clip choice, ``tl1_select`` (a fix of this project's design, not the paper's): the default
  ``above_mean`` picks the clip that maximises ``sum_{t in clip} (sigma_t - mean_t sigma_t)``
  with ``sigma_t = L2norm(u_t) . q`` the single-frame scores (the run of above-average frames);
  ``argmax`` is this project's ``argmax_se sigma``. The argmax is degenerate: the frames of a video
  share a large common component (its scene), so ``|sum_clip u|`` grows like the clip length and
  the clip cosine is in effect a clip *mean* of the frame scores, whose maximum is a minimal clip
  (a 2-frame clip of above-average frames beats any clip that also covers weaker ones) whatever
  the scores. Measured on the generated VidSTG val split (GT 14.0 of 32 frames): argmax predicts
  2.1-2.4 frames at init and after 1-3 epochs at lr 1e-3, m_tIoU 0.04-0.08 (a uniform random
  segment: 0.20), so the PAPER point scored m_vIoU 0.009 < Random 0.032; above_mean predicts
  about 13 frames, m_tIoU 0.30 and m_vIoU 0.042 for the same (untrained) model. The choice also
  sets the training crop of the matching losses and the best clip of L_tmp's intra hinge.
* Matching (Eqs. 15-17): ``f^_m = W_v mean_{t in clip} X[t, tube_m(t)] + b_v`` over a predicted
  clip [D] (A4, A17); ``s_x(V, n_ij) = max_m f^_m^T (r~_ij + r^U_ij)`` for every sentence x video
  pair of the batch. ``refuse_negatives=True`` [D] (default): the pair (S, V') is scored exactly as
  inference would score it, by S's chart fused with V''s tubes (Eqs. 5-14 rerun per pair: B^2
  charts; one attention-dropout mask per sentence, shared by its pairs), V' cropped to the clip
  the temporal module picks for (S, V') (its ``q`` from that chart), and Eq. 19's ``pi`` of that
  chart; ``False`` (the earlier behaviour): S's chart fused with its own video V is reused against
  every V', each V' cropped to the clip picked for its own sentence. See "Negatives" below.
* Word level (Eq. 18) [P]: ``l_word = -log exp(s(V, n_ii)) / sum_{V'} exp(s(V', n_ii))`` over the
  batch's videos, no temperature; other rows of the same video are masked (A18).
* Phrase level (Eqs. 19-20): ``d(V, n_ij) = s(V, n_ij) pi_ij`` (``span_weight=marginal``, A19;
  ``literal`` is ``c^B c^U / c^B_root``; with ``refuse_negatives`` pi of the pair's own chart);
  ``l_phrase = mean_{V'} [d(V', n) - d(V, n) + gamma]_+ + mean_{S'} [d(V, n') - d(V, n) +
  gamma]_+`` over all spans i < j, root included (A20, A21;
  ``phrase_negatives=hardest`` takes the maximum instead of the mean); ``n'`` is span (i, j) of
  another sentence S' with its own pi', used only where S' is long enough to have it.
* Total (Eq. 21 + §3.8): ``L = mu sum_i l_word + sum_(i<j) l_phrase + w_rec L_rec + w_tmp L_tmp``
  (sums over a sample's words and spans, then the batch mean). ``dsa=False`` drops l_phrase;
  ``svhu=False`` sets lam = 0 and skips the attention (Table 3's ablations, A36).
* Inference (§3.9): segment = the predicted clip (half-open in the prediction dict), tube
  ``m* = argmax_m f^_m . (r~ + r^U)`` at the subject leaf: ``subject_pos`` for declaratives (the
  first word when it is -1), the wh-word (first word) for questions (A27, ``question_node``);
  ``subject_node=root`` uses the whole sentence instead.

Negatives (``refuse_negatives``) [D]. The paper scores an unpaired (V', n_ii) or (V', n_ij) with
the same s^s as the paired one (§3.3, Eqs. 17-20), and s^s is computed from "the multi-modal
decomposition tree node", S's tree after the fusion with a video's tubes (§3.2, Eqs. 9-10); it
does not say which video's tubes the node of an unpaired pair carries. Reusing the node fused with
S's own video V (CLIORA's code does so; this implementation did until issue 23) puts V's own tubes
into the positive score only, ``lam f_ij . f^_m``, so the contrastive losses are won without
reading the words (spec A35). Where the paper is silent the project takes the reading under which
the method learns what the paper says it learns: each pair is scored as inference would score it,
hence the default ``True``. Measured on a planted toy (``bench/winner_toy.py --random-words``:
words drawn independently of the videos, B = 16, log B = 2.77 nats per word, 100 updates at lr
1e-3, seeds 0 / 1): without refusing (and the logsumexp chart) the word loss falls from 2.34 to
1.61 / 1.56 nats per word, with refusing it starts at 2.79 and ends at 2.78 / 2.78 (the base
model, which has no fusion: 2.77 / 2.78). ``False`` keeps the earlier behaviour. Cost: B^2 fused charts instead of B per
training step (inference is unchanged).

The chart's scores (``chart_scores``) [D]. Eq. 4 and Eq. 14 print a node's score as the
softmax-weighted *average* of its splits' (contexts') scores, and DIORA's and CLIORA's code do the
same (CLIORA ``inside_aggregate``: ``s_agg = sum(s * p)``); CLIORA's span weight ``exp(inside_s +
outside_s - inside_s[root])``, this implementation's reading of Eq. 19 (A19), is then not a
probability and has no bound (on the planted toy's 8-word sentences at initialisation: up to
2.1e2-2.3e2 without the fusion, 0.9e4-1.0e4 with it), and the phrase term's gradient swamps every
other term (below). Eq. 19's own words ("how likely it exists in the input
sentence") ask for a probability. With ``logsumexp`` (default) the chart runs the inside-outside
algorithm of a weighted grammar over binary trees (a tree's weight is exp of the sum of the rule
scores ``phi`` of its internal nodes): ``c^B_ij`` is the log total weight of the trees over (i, j),
``c^U_ij`` that of its outside contexts (so a context is scored with the inside's rule score of
the parent's split, not Eq. 12's ``r^U^T W r~``), and ``pi_ij = exp(c^B_ij + c^U_ij - c^B_root)`` is
the posterior probability that (i, j) is a constituent: ``pi <= 1``, 1 for every leaf and the
root, summing to 2n - 1 over a sentence's spans (tested against enumerating every tree). The node
features keep their form; their softmax weights over splits and contexts are now the posterior
probabilities of those splits and contexts. ``average`` keeps Eqs. 4, 12-14 as printed.

Measured on the planted toy (``bench/winner_toy.py --steps 200 --seeds 0 1``: 10 tubes, the
subject's prototype on one, two distractor nouns on two others, a scene vector shared by a
video's tubes; box accuracy on held-out batches, chance 0.10; Adam lr 1e-3, B 16, grad-clip 5,
200 updates; seeds 0 / 1). Before issue 23 (``refuse_negatives=False, chart_scores=average``) the
full model ended at 0.27 / 0.44 against 0.51 / 0.66 for the base model (``dsa=False,
svhu=False``); the phrase term's gradient norm at initialisation was 2.3e4 / 6.0e4 against 4.8 /
4.8 for the word term (2.1 / 2.0 for L_rec; pi up to 1.0e4 / 9.2e3), 690 / 68 after training. At
the defaults the full model ends at 0.68 / 0.76, the base model at 0.64 / 0.56; gradient norms at
initialisation word 3.2 / 2.5, phrase 2.7 / 2.9, L_rec 2.1 / 2.0 (after training: 2.4 / 2.3, 4.3
/ 4.1, 2.1 / 2.3). Each change alone: refusing with the average chart 0.54 / 0.81 (phrase
gradient 1.4e5 / 8.2e4 at initialisation; training pushes the averaged scores, and pi, down to
about 1-4, and the phrase gradient with them); the logsumexp chart without refusing 0.35 / 0.42
(the shortcut remains). On the generated VidSTG (first 32 training sentences of a 600-item
instance, at initialisation, the engine's probe summed over parameter groups): word 4.5, phrase
2.8e3, L_rec 2.5, L_tmp 9.8 before; word 1.7, phrase 1.8, L_rec 2.4, L_tmp 13.2 at the defaults.

Diagnostics: :meth:`validation_variants` asks the trainer for a second validation pass every
epoch with the fusion switched off at test time (``svhu=False`` on the trained weights; spec
A35), logged as ``epoch_val/fusion_off/<metric>`` (``val_fusion_off=False`` skips it); and
:meth:`loss_terms` gives the engine's once-per-epoch gradient probe the terms ``word``,
``phrase``, ``rec``, ``tmp`` (``grad/<term>/<group>`` per top-level submodule: ``leaf``,
``compose``, ``tube_proj``, ``rec_proj``, ``frame_proj``, and ``other`` for the root vector).

Published values [P]: alpha 1.0, beta 0.5, gamma 0.5, lam (λ) 1.0, mu 1.0, lr 1e-5, batch 64, 20
epochs. Not published: delta (default 0, A13), every size, the optimiser (Adam + clip 5, CLIORA,
A25), the rec/tmp weights (1.0, A24). W ~ N(0, 1) as DIORA; u_root ~ N(0, 1).

Choices made for this project (beyond those labelled):

* Word features: GloVe 300-d (``DataInfo.word_vectors``) replaces the paper's ELMo 1024-d, which is
  not available here (A5 names GloVe as the fallback). Static embeddings carry no context: the
  outside pass is the only thing that tells two "man"s of one sentence apart.
* Batches: the engine draws random batches, so instead of length buckets (A34) sentences are
  padded and masked: a cell is valid when its span ends inside the sentence, the root of each
  sentence is its own cell (0, n-1) with the learned root context, and contexts whose parent
  crosses the sentence end are masked. Every valid cell then equals the unpadded chart's
  (tested). Sentences of any length train (a 1-word sentence has no phrase term); ``n'`` for the
  phrase hinge is restricted to sentences S' that have span (i, j).
* Tubes: the batch's precomputed ``tubes`` (``linking=batch``, the contract's VCMA Eq. 4 links)
  by default; ``linking=greedy`` links here with this project's seeded greedy IoU tracker (§1.2, A3):
  N tubes seeded at the middle valid frame, extended forward and backward by the best-IoU box.
* Unigram statistics for the reconstruction negatives are the running counts of the training
  tokens seen so far (+1 smoothing): the DataInfo carries no word frequencies.
* Sizes for a 2-core CPU: ``hidden_dim`` 32 (this project's [D] 400 is CLIORA's and the paper-scale
  override: ``model.hidden_dim=400``), ``max_words`` 0 (no cap; the chart costs O(L^3)).
* Cost: before issue 23 (one fused chart per sentence) one epoch of the generated VidSTG train
  split (7262 sentences, batch 32, T = 32, N = M = 10) took 243 s on one CPU thread of this
  (shared, loaded) 2-core machine, 31 sentences/s; the chart is O(L^3) per sentence and the pair
  scores O(B^2 C M). ``refuse_negatives`` builds B^2 fused charts per step: one training step of
  32 sentences (at most 12 words) took 8.0 s against 0.78 s without it and 0.68 s without the
  fusion (one loaded CPU thread); about 4-5 sentences/s. A GPU, or ``refuse_negatives=False`` for
  quick CPU runs, is the way out; inference is unchanged.
* Measured before issue 23 (``refuse_negatives=False, chart_scores=average``, ``temporal=tl1``)
  on the generated VidSTG (val, 1 epoch of the full train split, Adam lr 1e-3, batch 64, seed 0; Random 0.032 m_vIoU; a random linked tube over the GT segment 0.153, the best 0.620):
  the published lr 1e-5 leaves the model where it starts in a few epochs (m_vIoU 0.0094 after one
  epoch, 0.0093 at init). At lr 1e-3 the full model *anti*-learns: with the GT segment given its
  tube choice falls to 0.07 and the single-frame TL-1 scores rank GT frames below the others (AUC
  0.36-0.40), with either clip choice and also with ``dsa=False``; switching the fusion off at
  test time brings the tube choice back to about chance (0.11-0.15). This is the positive-pair
  shortcut of choice A35: ``r~`` carries the paired video's own tubes, so the contrastive losses are
  won by what a video shares across its tubes and frames (its scene), not by the words; with
  ``above_mean`` the full model ends that epoch at m_vIoU 0.013 (m_tIoU 0.17). Table 3's base
  model (``dsa=False, svhu=False``, ``above_mean``) learns: m_vIoU 0.117, m_tIoU 0.40, tube choice
  on the GT segment 0.284, frame AUC 0.69. With ``dsa=True`` (and ``svhu=False``) it barely learns
  in that epoch: m_vIoU 0.043, tube choice 0.148 (0.055 and 0.161 without ``grad_clip``); the
  phrase loss's gradient (norm 400-2700 at init, from the unbounded span weights pi, up to ~3000)
  is ~100x the word loss's, so it sets the direction of the shared parameters and, under
  ``grad_clip`` 5, the step size of every term.
* Temporal module and the full model after issue 23, measured with ``bench/winner_temporal.py``
  (generated VidSTG at ``limit=600``: 1323 training sentences, the first 400 of a seeded
  permutation of val; Adam lr 1e-3, batch 32, seed 0, 4 epochs = 164 updates; m_tIoU on real
  frame ids / m_vIoU, %; the predicted segment's share of the video in brackets): the whole video
  46.2 (100%); base model (``dsa=False, svhu=False``) TL-1 43.8 / 13.3 (44%), TL-2 49.9 / 11.8
  (86%); full model TL-2 47.5 / 10.3 (88%; TL-1 after 2 epochs 30.5 / 5.0); ``tubemil`` 40.6 /
  17.3 at its ``seg_threshold`` 0.5 (21%), 55.8 / 21.7 at 0 (46%). TL-2 is the default because it
  is the one that beats the whole video, but narrowly, and mostly by trimming the least relevant
  ~12% of the frames: its frame scores are weaker than ``tubemil``'s (at ``seg_threshold`` 0: 40.6
  base, 31.5 full, against 55.8), and ``seg_threshold`` -0.5 was the best of {-1, -0.5, 0, 0.5} on
  that same val split for both models (0.5: 22.3 base). Before issue 23 (TL-1, no refusing,
  averaged chart) the full model went from 30.1 / 4.5 at initialisation to 16.4 / 1.5 after 2
  epochs, and switching its fusion off at test time scored higher (19.2 / 2.6); at the defaults it
  learns, and after 4 epochs the fusion helps at test time (fusion off: 8.8 m_vIoU against 10.3).
  The 32-d chart limits the spatial part most: the base model with ``hidden_dim=128`` reached
  50.4 / 18.5 after 4 epochs (49.9 / 11.8 at 32).
* Not implemented from this project's options: ``temporal=cpl``, ``att_source=pass2``,
  ``relink=True``, ``phrase_spans=half``, ``warm_start=diora``.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
import torch.nn.functional as F
from torch import nn

from .base import DataInfo, GroundingModel, ModelConfig, check_config
from .registry import register
from .tubemil import best_segment

PI_CLAMP = 30.0  # exp(clamp(., max=30)) guards the span marginal against float32 overflow
NEG = -1e9  # masked logits (finite, so that fully masked rows stay finite)


@dataclasses.dataclass
class WinnerConfig(ModelConfig):
    hidden_dim: int = 32  # D (400 in CLIORA; 32 fits a 2-core CPU)
    alpha: float = 1.0  # self-correlation weight, Eq. 8 [P]
    beta: float = 0.5  # structural-context weight, Eq. 8 [P]
    delta: float = 0.0  # interference threshold, Eq. 7 (not published; -1.01 = off)
    lam: float = 1.0  # lambda, visual-cue injection, Eq. 10 [P]
    gamma: float = 0.5  # phrase hinge margin, Eq. 20 [P]
    mu: float = 1.0  # word-loss weight, Eq. 21 [P]
    learn_alpha_beta: bool = False  # alpha, beta as parameters initialised at the values above (A15)
    att_context: str = "inv_dist"  # inv_dist | mean | literal (A14)
    parents: str = "all"  # all (every proper ancestor) | literal (t <= i, k > j) (A10)
    att_dropout: float = 0.1  # on the structural-attention probabilities, Eq. 9
    share_inside_outside: bool = True  # one MLP and W for Eqs. 1-2 and 11-12 (A7)
    span_weight: str = "marginal"  # marginal exp(cB + cU - cB_root) | literal cB cU / cB_root (A19)
    chart_scores: str = "logsumexp"  # logsumexp (exact inside-outside: pi is a span posterior) | average (Eqs. 4, 14 as printed)
    refuse_negatives: bool = True  # fuse (Eqs. 9-10) every sentence with every video of the batch to score negatives (A35)
    val_fusion_off: bool = True  # per-epoch diagnostic: val metrics with the fusion switched off at test time
    phrase_negatives: str = "mean"  # mean | hardest over in-batch negatives (A20)
    mask_same_video: bool = True  # other sentences of the same video are not negatives (A18)
    dsa: bool = True  # decomposition structure alignment: the phrase-level loss (Table 3)
    svhu: bool = True  # structure-guided video understanding: attention + fusion (Table 3)
    w_rec: float = 1.0  # reconstruction weight (A24)
    k_neg: int = 100  # reconstruction negatives (A23)
    w_tmp: float = 1.0  # temporal-loss weight (A24)
    temporal: str = "tl2"  # tl2 | tl1 (project designs) | full (whole video) | oracle (GT segment, diagnostic)
    tau_t: float = 0.1  # TL-1 temperature
    gamma_t: float = 0.1  # TL-1 best clip vs complement margin
    min_clip: float = 0.05  # shortest clip, as a fraction of T (at least 2 frames)
    tl1_select: str = "above_mean"  # above_mean (max-sum run of above-average frames) | argmax (the first TL-1 design, degenerate)
    test_segment: str = "model"  # prediction only: model (the temporal module) | full (whole video) | oracle (GT segment)
    seg_threshold: float = -0.5  # TL-2: standardised frame score a frame needs to join the segment
    linking: str = "batch"  # batch (precomputed tubes) | greedy (seeded greedy IoU tracking, here)
    question_node: str = "wh"  # wh (first word) | subject_pos, the subject leaf of a question (A27)
    subject_node: str = "leaf"  # leaf | root, the node whose best tube is predicted
    max_words: int = 0  # cap on the words per sentence (0 = none)

    def __post_init__(self):
        check_config(self, {"hidden_dim": (1, None), "alpha": (None, None), "beta": (None, None),
                            "delta": (-1.01, 1.0), "lam": (0, None), "gamma": (0, None), "mu": (0, None),
                            "att_dropout": (0, 0.9), "w_rec": (0, None), "k_neg": (1, None),
                            "w_tmp": (0, None), "tau_t": (1e-4, None), "gamma_t": (0, None),
                            "min_clip": (0, 1), "max_words": (0, None), "seg_threshold": (-3, 3)})
        for name, allowed in (("att_context", ("inv_dist", "mean", "literal")), ("parents", ("all", "literal")),
                              ("span_weight", ("marginal", "literal")), ("phrase_negatives", ("mean", "hardest")),
                              ("chart_scores", ("logsumexp", "average")),
                              ("temporal", ("tl2", "tl1", "full", "oracle")),
                              ("test_segment", ("model", "full", "oracle")),
                              ("tl1_select", ("argmax", "above_mean")), ("linking", ("batch", "greedy")),
                              ("question_node", ("wh", "subject_pos")), ("subject_node", ("leaf", "root"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not allowed; allowed: {', '.join(allowed)}")


# --------------------------------------------------------------------------- chart indexing
def cell(i: int, j: int, L: int) -> int:
    """Chart cell of the 0-based inclusive span (i, j) in a chart over L words."""
    lvl = j - i
    return lvl * L - lvl * (lvl - 1) // 2 + i


@functools.lru_cache(maxsize=64)
def chart_tables(L: int, parents: str = "all") -> dict:
    """Static index tables of a chart over L words (cached per length).

    ``span [C, 2]`` (i, j) per cell; ``inside[l] = (left [L-l, l], right [L-l, l])`` children of
    every split of level l; ``outside[l] = (parent [L-l, L-l-1], sibling [L-l, L-l-1])`` the
    contexts of level l (right-sibling splits first) and ``rule[l] [L-l, L-l-1]`` where each
    context's parent-split score sits in the inside pass's flat rule scores (level l' >= 1 in
    order, its ``[L-l', l']`` splits row-major); ``related [C, C]`` (target, related node) with
    the node itself; ``dist [C, C]`` = |len(target) - len(related)|.
    """
    C = L * (L + 1) // 2
    span = torch.zeros(C, 2, dtype=torch.long)
    for lvl in range(L):
        for i in range(L - lvl):
            span[cell(i, i + lvl, L)] = torch.tensor([i, i + lvl])
    inside, outside = {}, {}
    for lvl in range(1, L):
        left = [[cell(i, k, L) for k in range(i, i + lvl)] for i in range(L - lvl)]
        right = [[cell(k + 1, i + lvl, L) for k in range(i, i + lvl)] for i in range(L - lvl)]
        inside[lvl] = (torch.tensor(left), torch.tensor(right))
    rule_offset = [0, 0]  # flat offset of level l's rule scores
    for lvl in range(1, L):
        rule_offset.append(rule_offset[-1] + (L - lvl) * lvl)

    def rule_of(i: int, j: int, k: int) -> int:  # parent (i, j) split into (i, k), (k + 1, j)
        return rule_offset[j - i] + i * (j - i) + (k - i)

    rules = {}
    for lvl in range(L - 1):
        par, sib, rule = [], [], []
        for i in range(L - lvl):
            j = i + lvl
            p = [cell(i, k, L) for k in range(j + 1, L)] + [cell(k, j, L) for k in range(i)]
            s = [cell(j + 1, k, L) for k in range(j + 1, L)] + [cell(k, i - 1, L) for k in range(i)]
            r = [rule_of(i, k, j) for k in range(j + 1, L)] + [rule_of(k, j, i - 1) for k in range(i)]
            par.append(p)
            sib.append(s)
            rule.append(r)
        outside[lvl] = (torch.tensor(par, dtype=torch.long).view(L - lvl, L - lvl - 1),
                        torch.tensor(sib, dtype=torch.long).view(L - lvl, L - lvl - 1))
        rules[lvl] = torch.tensor(rule, dtype=torch.long).view(L - lvl, L - lvl - 1)
    i, j = span[:, 0], span[:, 1]
    t, k = i[None, :], j[None, :]
    i, j = i[:, None], j[:, None]
    anc = (t <= i) & (k > j) if parents == "literal" else (t <= i) & (k >= j)
    desc = (t >= i) & (k <= j)
    related = anc | desc
    dist = ((j - i) - (k - t)).abs()
    return {"C": C, "span": span, "inside": inside, "outside": outside, "rule": rules, "related": related,
            "dist": dist}


def l2norm(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-8)


# --------------------------------------------------------------------------- structural attention
def structural_attention(A: torch.Tensor, valid: torch.Tensor, tables: dict, alpha, beta, delta: float,
                         context: str = "inv_dist") -> tuple[torch.Tensor, torch.Tensor]:
    """Eqs. 6-8: ``A [B, C, M]`` node-tube correlations, ``valid [B, C]`` -> (``Att [B, C, M]``,
    ``keep [B, C, C]`` the related nodes kept in the context of each target node)."""
    R = tables["related"].to(A.device)[None] & valid[:, None, :] & valid[:, :, None]  # [B, C, C]
    Rf = R.to(A.dtype)
    with torch.no_grad():
        A_hat = Rf @ A / Rf.sum(-1, keepdim=True).clamp(min=1)  # Eq. 6, mean over R(i,j)
        sim = l2norm(A_hat) @ l2norm(A).transpose(1, 2)  # Eq. 7, [B, C(target), C(related)]
        eye = torch.eye(A.shape[1], dtype=torch.bool, device=A.device)[None]
        keep = R & ~eye & ~(sim < delta)
    dist = tables["dist"].to(A.device, A.dtype)[None]
    kf = keep.to(A.dtype)
    if context == "inv_dist":
        w = kf / dist.clamp(min=1)
        w = w / w.sum(-1, keepdim=True).clamp(min=1e-12)
    elif context == "mean":
        w = kf / kf.sum(-1, keepdim=True).clamp(min=1)
    else:  # literal: sum_K a / sum_K |delta|
        w = kf / (kf * dist).sum(-1, keepdim=True).clamp(min=1)
    return alpha * A + beta * (w @ A), keep


# --------------------------------------------------------------------------- tube linking
def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of ``a [..., P, 4]`` and ``b [..., Q, 4]`` (x1, y1, x2, y2) -> ``[..., P, Q]``."""
    lt = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = lambda x: (x[..., 2:] - x[..., :2]).clamp(min=0).prod(-1)  # noqa: E731
    return inter / (area(a)[..., :, None] + area(b)[..., None, :] - inter).clamp(min=1e-12)


@torch.no_grad()
def link_tubes(boxes: torch.Tensor, frame_valid: torch.Tensor | None = None,
               conf: torch.Tensor | None = None) -> torch.Tensor:
    """Seeded greedy IoU tracking (§3.1 uses linked tubes): ``boxes [B, T, N, 4]`` -> ``tubes [B, N, T]``.

    Tube m starts at proposal m of the middle valid frame ``t0 = n_valid // 2`` and is extended
    forward and backward by ``argmax_n IoU(prev box, box_n) + 1e-3 conf_n``; invalid frames get -1.
    Valid frames are assumed to be a prefix of the T frames.
    """
    B, T, N, _ = boxes.shape
    dev = boxes.device
    fv = torch.ones(B, T, dtype=torch.bool, device=dev) if frame_valid is None else frame_valid.bool()
    nv = fv.sum(1).clamp(min=1)
    t0 = nv // 2
    bi = torch.arange(B, device=dev)
    tubes = torch.full((B, N, T), -1, dtype=torch.long, device=dev)
    seed = torch.arange(N, device=dev).expand(B, N)
    tubes[bi[:, None], torch.arange(N, device=dev)[None], t0[:, None]] = seed
    for direction in (1, -1):
        cur = seed.clone()
        for d in range(1, T):
            t = t0 + direction * d
            ok = (t >= 0) & (t < nv)
            if not ok.any():
                break
            tc = t.clamp(0, T - 1)
            prev = boxes[bi, (tc - direction).clamp(0, T - 1)]  # [B, N, 4]
            prev = torch.gather(prev, 1, cur[..., None].expand(B, N, 4))
            score = box_iou(prev, boxes[bi, tc])  # [B, N(tube), N(proposal)]
            if conf is not None:
                score = score + 1e-3 * conf[bi, tc][:, None, :]
            nxt = score.argmax(-1)
            cur = torch.where(ok[:, None], nxt, cur)
            upd = torch.where(ok[:, None], nxt, tubes[bi, :, tc])
            tubes[bi[:, None], torch.arange(N, device=dev)[None], tc[:, None]] = upd
    return tubes


# --------------------------------------------------------------------------- losses
def word_loss(sx: torch.Tensor, valid: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """Eq. 18 summed over a sentence's words, mean over the batch.

    ``sx [B_s, B_v, L]`` word-tube scores s(V_b, n^a_ii), ``valid [B, L]`` real words, ``same
    [B, B]`` pairs of one video (the diagonal is the positive; the other same-video pairs are
    left out of the denominator)."""
    B = sx.shape[0]
    eye = torch.eye(B, dtype=torch.bool, device=sx.device)
    logp = sx.masked_fill((same & ~eye)[..., None], NEG).log_softmax(1)
    logp = logp.diagonal(dim1=0, dim2=1).transpose(0, 1)  # [B, L]
    return -(logp * valid).sum(1).mean()


def phrase_loss(sx: torch.Tensor, w: torch.Tensor, valid: torch.Tensor, phrases: torch.Tensor,
                same: torch.Tensor, gamma: float, negatives: str = "mean") -> torch.Tensor:
    """Eqs. 19-20 summed over a sentence's spans, mean over the batch.

    ``sx [B_s, B_v, C]`` node-video scores, ``w [B, C]`` span weights (pi) of each sentence's own
    chart, or ``w [B_s, B_v, C]`` those of every (sentence, video) pair's chart
    (``refuse_negatives``), ``valid [B, C]`` cells inside each sentence, ``phrases [B, C]`` the
    spans scored (i < j). ``d[a, b, c] = sx[a, b, c] w[a, (b,) c]``; the first hinge ranks the
    other videos V_b against V_a for node c of S_a, the second the node c of the other sentences
    S_a' (where they have it, with their own weights) on V_a."""
    d = sx * (w if w.dim() == 3 else w[:, None, :])
    pos = d.diagonal(dim1=0, dim2=1).transpose(0, 1)  # [B, C]: d(V_a, n^a_c)
    neg = ~same
    h1 = (d - pos[:, None, :] + gamma).clamp(min=0)  # [a, b, c]
    m1 = neg[..., None] & phrases[:, None, :]
    h2 = (d.transpose(0, 1) - pos[:, None, :] + gamma).clamp(min=0)  # [a, a', c] = d(V_a, n^a'_c)
    m2 = neg[..., None] & phrases[:, None, :] & valid[None, :, :]

    def reduce(h, m):
        if negatives == "hardest":
            return (h * m).max(1).values
        mf = m.to(h.dtype)
        return (h * mf).sum(1) / mf.sum(1).clamp(min=1)

    return (reduce(h1, m1) + reduce(h2, m2)).sum(1).mean()


# --------------------------------------------------------------------------- the model
class ComposeMLP(nn.Module):
    """CLIORA's ``VLComposeMLP``: Linear(2D, D), ReLU, Linear(D, D), ReLU; plus the bilinear W
    (none with ``score=False``: an outside MLP of its own under ``chart_scores=logsumexp``, whose
    context scores are the inside pass's rule scores)."""

    def __init__(self, D: int, score: bool = True):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * D, D), nn.ReLU(), nn.Linear(D, D), nn.ReLU())
        self.W = nn.Parameter(torch.randn(D, D)) if score else None  # N(0, 1) as DIORA

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.mlp(torch.cat([a, b], -1))
        return h, None if self.W is None else ((a @ self.W) * b).sum(-1)


@register("winner")
class Winner(GroundingModel):
    task = "tube"
    Config = WinnerConfig
    prediction_options = ("test_segment",)  # the whole-video / GT-segment readings of one trained model

    def __init__(self, cfg: WinnerConfig, info: DataInfo):
        super().__init__(cfg, info)
        dims = info.dims
        D = cfg.hidden_dim
        vectors = torch.as_tensor(info.word_vectors, dtype=torch.float32)
        self.register_buffer("word_vectors", vectors, persistent=False)
        self.register_buffer("unigram", torch.ones(len(vectors)))  # running token counts (+1)
        Dw, Dr, Df = vectors.shape[1], dims["Dr"], dims["Df"]
        self.leaf = nn.Linear(Dw, D)
        self.compose = ComposeMLP(D)
        self.compose_out = self.compose if cfg.share_inside_outside else ComposeMLP(
            D, score=cfg.chart_scores == "average")
        self.root = nn.Parameter(torch.randn(D))
        self.tube_proj = nn.Linear(Dr, D)
        self.rec_proj = nn.Linear(Dw, D, bias=False)
        # built only where used, so that every parameter gets a gradient (DDP)
        if cfg.temporal in ("tl1", "tl2"):
            self.frame_proj = nn.Sequential(nn.Linear(Df, D), nn.LayerNorm(D))
        self.att_drop = nn.Dropout(cfg.att_dropout)
        if cfg.learn_alpha_beta and cfg.svhu:
            self.alpha = nn.Parameter(torch.tensor(float(cfg.alpha)))
            self.beta = nn.Parameter(torch.tensor(float(cfg.beta)))
        else:
            self.alpha, self.beta = cfg.alpha, cfg.beta

    def validation_variants(self) -> dict[str, dict]:
        """Extra validation passes per epoch (:meth:`GroundingModel.validation_variants`): the
        trained model with the fusion switched off at test time (spec A35's diagnostic)."""
        return {"fusion_off": {"svhu": False}} if self.cfg.svhu and self.cfg.val_fusion_off else {}

    # ------------------------------------------------------------------ language chart
    def lengths(self, batch) -> torch.Tensor:
        n = batch["token_mask"].sum(1).clamp(min=1)
        return n.clamp(max=self.cfg.max_words) if self.cfg.max_words else n

    def leaves(self, tokens: torch.Tensor) -> torch.Tensor:
        return l2norm(torch.tanh(self.leaf(self.word_vectors[tokens])))

    def inside(self, leaves: torch.Tensor, tables: dict, fuse: torch.Tensor | None = None,
               lam: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Eqs. 1-4 over ``leaves [B, L, D]``; with ``fuse [B, C, D]`` each node gets Eq. 10's
        ``L2norm(r + lam f)`` before its parents are built (pass 2). -> ``H [B, C, D]``, ``S [B, C]``
        and the rule scores ``r_ik^T W r_k+1,j`` of every split ``[B, sum_l (L - l) l]`` (flat as
        :func:`chart_tables`' ``rule``). ``chart_scores=logsumexp``: ``c_ij = logsumexp_k c_ijk``
        (the inside score of the chart's weighted grammar); ``average``: ``sum_k softmax_k(c_ijk)
        c_ijk`` (Eq. 4 as printed)."""
        B, L, D = leaves.shape
        lse = self.cfg.chart_scores == "logsumexp"
        H = leaves.new_zeros(B, tables["C"], D)
        S = leaves.new_zeros(B, tables["C"])
        first = leaves if fuse is None else l2norm(leaves + lam * fuse[:, :L])
        H = H.index_copy(1, torch.arange(L, device=H.device), first)
        rules = []
        for lvl in range(1, L):
            left, right = (x.to(H.device) for x in tables["inside"][lvl])
            hl, hr = H[:, left], H[:, right]  # [B, L-l, l, D]
            h, phi = self.compose(hl, hr)
            s = phi + S[:, left] + S[:, right]
            w = s.softmax(-1)
            h = l2norm((w[..., None] * h).sum(-2))
            idx = torch.arange(lvl * L - lvl * (lvl - 1) // 2, lvl * L - lvl * (lvl - 1) // 2 + L - lvl,
                               device=H.device)
            if fuse is not None:
                h = l2norm(h + lam * fuse[:, idx])
            H = H.index_copy(1, idx, h)
            S = S.index_copy(1, idx, s.logsumexp(-1) if lse else (w * s).sum(-1))
            rules.append(phi.flatten(1))
        return H, S, torch.cat(rules, 1) if rules else leaves.new_zeros(B, 0)

    def outside(self, H: torch.Tensor, S: torch.Tensor, rules: torch.Tensor, n: torch.Tensor, tables: dict):
        """Eqs. 11-14: top-down from each sentence's root (0, n-1). -> ``HU [B, C, D]``, ``SU [B, C]``.

        ``chart_scores=logsumexp``: a context (parent p, sibling s) of node x scores ``rule(p -> x,
        s) + c^U_p + c^B_s`` with the inside pass's rule score of that split, and ``c^U_x`` is the
        logsumexp over the contexts (the exact outside score, so ``exp(c^B + c^U - c^B_root)`` is
        the posterior probability of the span); ``average``: Eq. 12's ``r^U_p^T W r~_s + c^U_p +
        c^B_s`` and the softmax-weighted average (Eq. 14 as printed)."""
        B, C, D = H.shape
        L = int(tables["span"][-1, 1]) + 1
        dev = H.device
        lse = self.cfg.chart_scores == "logsumexp"
        span_end = tables["span"][:, 1].to(dev)
        root = l2norm(self.root)
        HU = H.new_zeros(B, C, D)
        SU = H.new_zeros(B, C)
        for lvl in range(L - 1, -1, -1):
            start = lvl * L - lvl * (lvl - 1) // 2
            idx = torch.arange(start, start + L - lvl, device=dev)
            if lvl < L - 1:
                par, sib = (x.to(dev) for x in tables["outside"][lvl])
                if lse:
                    h = self.compose_out.mlp(torch.cat([HU[:, par], H[:, sib]], -1))
                    s = rules[:, tables["rule"][lvl].to(dev)]
                else:
                    h, s = self.compose_out(HU[:, par], H[:, sib])
                s = s + SU[:, par] + S[:, sib]
                ok = span_end[par][None] < n[:, None, None]  # parent inside the sentence
                w = s.masked_fill(~ok, NEG).softmax(-1) * ok
                h = l2norm((w[..., None] * h).sum(-2))
                s = s.masked_fill(~ok, NEG).logsumexp(-1) if lse else (w * s).sum(-1)
            else:
                h, s = H.new_zeros(B, 1, D), H.new_zeros(B, 1)
            is_root = torch.zeros(B, L - lvl, dtype=torch.bool, device=dev)
            is_root[:, 0] = n - 1 == lvl
            h = torch.where(is_root[..., None], root.expand_as(h), h)
            s = torch.where(is_root, torch.zeros_like(s), s)
            HU = HU.index_copy(1, idx, h)
            SU = SU.index_copy(1, idx, s)
        return HU, SU

    # ------------------------------------------------------------------ video side
    def tubes_of(self, batch) -> torch.Tensor:
        if self.cfg.linking == "greedy":
            return link_tubes(batch["boxes"], batch["frame_valid"])
        return batch["tubes"]

    @staticmethod
    def tube_frames(batch, tubes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-frame tube features ``X [B, T, M, Dr]`` and validity ``[B, T, M]``."""
        R = batch["region_feats"]
        B, T, N, Dr = R.shape
        idx = tubes.transpose(1, 2)  # [B, T, M]
        X = torch.gather(R, 2, idx.clamp(min=0)[..., None].expand(*idx.shape, Dr))
        ok = (idx >= 0) & batch["frame_valid"][..., None].bool()
        return X, ok

    def pool_tubes(self, X: torch.Tensor, ok: torch.Tensor, frames: torch.Tensor | None = None):
        """``f = W_v mean_t X + b_v`` over the valid frames (and ``frames [B, T]``) -> ``[B, M, D]``,
        valid ``[B, M]``; ``frames [A, B, T]`` (a clip of video b per pair (a, b)) -> ``[A, B, M, D]``,
        ``[A, B, M]``."""
        if frames is None or frames.dim() == 2:
            m = ok if frames is None else ok & frames[..., None]
            mf = m.to(X.dtype)
            g = (X * mf[..., None]).sum(1)
        else:
            m = ok[None] & frames[..., None]  # [A, B, T, M]
            mf = m.to(X.dtype)
            g = torch.einsum("abtm,btmr->abmr", mf, X)
        g = g / mf.sum(-2).clamp(min=1)[..., None]
        return self.tube_proj(g), m.any(-2)

    # ------------------------------------------------------------------ temporal (TL-1, project design)
    def clips(self, T: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        lmin = min(T, max(2, round(self.cfg.min_clip * T)))
        s, e = torch.triu_indices(T, T, offset=lmin - 1, device=device)
        return s, e

    def temporal(self, batch, q: torch.Tensor, same: torch.Tensor, mode: str | None = None):
        """``q [B, D]``: each sentence's summary of its own chart, or ``q [B_s, B_v, D]``: sentence a's
        summary of its chart fused with video b (``refuse_negatives``). -> (start, end inclusive,
        ``[B]`` or per pair ``[B_s, B_v]``; L_tmp or None). ``mode``: another module than ``temporal``."""
        fv = batch["frame_valid"].bool()
        B, T = fv.shape
        nf = fv.sum(1).clamp(min=1)
        pairs = q.dim() == 3
        mode = mode or self.cfg.temporal
        if mode in ("full", "oracle"):
            if mode == "full":
                s, e = torch.zeros_like(nf), nf - 1
            else:
                g = batch["gt_segment"]
                s = g[:, 0].clamp(0, T - 1)
                e = torch.maximum(g[:, 1] - 1, s).clamp(max=T - 1)
            return (s.expand(B, B), e.expand(B, B), None) if pairs else (s, e, None)
        u = self.frame_proj(batch["frame_feats"]) * fv[..., None]
        if mode == "tl2":
            return self.temporal_frames(u, fv, q, same)
        P = F.pad(u.cumsum(1), (0, 0, 1, 0))  # [B, T+1, D]
        cs, ce = self.clips(T, u.device)
        length = (ce - cs + 1).to(u.dtype)
        clip_sum = P[:, ce + 1] - P[:, cs]  # [B, K, D]
        h = l2norm(clip_sum)
        clip_ok = ce[None] < nf[:, None]  # [B, K] (valid frames are a prefix)
        eq = "bkd,abd->abk" if pairs else "bkd,bd->bk"
        own = torch.einsum(eq, h, q).masked_fill(~clip_ok, NEG)  # [(B_s,) B, K]: sigma(V, S)
        if self.cfg.tl1_select == "argmax":
            best = own.argmax(-1)
        else:  # above_mean: the clip with the largest sum of above-average frame scores
            with torch.no_grad():
                sf = torch.einsum(eq.replace("k", "t"), l2norm(u), q)  # [(B_s,) B, T] sigma of single frames
                c = (sf - (sf * fv).sum(-1, keepdim=True) / nf[:, None]) * fv
                Pc = F.pad(c.cumsum(-1), (1, 0))
                best = (Pc[..., ce + 1] - Pc[..., cs]).masked_fill(~clip_ok, NEG).argmax(-1)
        if not self.training:
            return cs[best], ce[best], None
        bi = torch.arange(B, device=q.device)
        if pairs:
            sig = own  # [B_s, B_v, K]
            best_own, s_best, q_own = best[bi, bi], own[bi, bi, best[bi, bi]], q[bi, bi]
        else:
            sig = torch.einsum("bkd,ad->abk", h, q).masked_fill(~clip_ok[None], NEG)  # [B_s, B_v, K]
            best_own, s_best, q_own = best, own[bi, best], q
        sig_star = sig.max(-1).values  # [B_s, B_v]
        logits = (sig_star / self.cfg.tau_t).masked_fill(same & ~torch.eye(B, dtype=torch.bool, device=q.device), NEG)
        inter = F.cross_entropy(logits, bi)
        comp = P[:, -1] - clip_sum[bi, best_own]
        comp_n = nf.to(u.dtype) - length[best_own]
        has = comp_n > 0
        s_comp = (l2norm(comp) * q_own).sum(-1)
        intra = ((self.cfg.gamma_t - s_best + s_comp).clamp(min=0) * has).sum() / has.sum().clamp(min=1)
        return cs[best], ce[best], inter + intra

    def temporal_frames(self, u: torch.Tensor, fv: torch.Tensor, q: torch.Tensor, same: torch.Tensor):
        """TL-2 (project design): frame scores ``z_t = cos(u_t, q)``; segment = the run maximising
        ``sum_t (z'_t - seg_threshold)`` of the per-video standardised scores ``z'``; L_tmp = InfoNCE
        over the batch in both directions (sentence -> videos, video -> sentences) of ``p =
        tau_t logsumexp_t(z_t / tau_t)``."""
        B, T = fv.shape
        pairs = q.dim() == 3
        eq = "btd,abd->abt" if pairs else "btd,bd->bt"
        z = torch.einsum(eq, l2norm(u), q)  # [(B_s,) B, T]: each sentence with each video (pairs) or its own
        with torch.no_grad():
            flat = z.reshape(-1, T)
            seg = best_segment(flat, fv.expand(*z.shape).reshape(-1, T), self.cfg.seg_threshold)
            start, end = seg[:, 0].view(z.shape[:-1]), (seg[:, 1] - 1).view(z.shape[:-1])
        if not self.training:
            return start, end, None
        if not pairs:
            z = torch.einsum("btd,ad->abt", l2norm(u), q)  # [B_s, B_v, T]
        tau = self.cfg.tau_t
        p = tau * (z / tau).masked_fill(~fv[None], NEG).logsumexp(-1)  # [B_s, B_v]
        logits = (p / tau).masked_fill(same & ~torch.eye(B, dtype=torch.bool, device=q.device), NEG)
        target = torch.arange(B, device=q.device)
        return start, end, F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)

    # ------------------------------------------------------------------ full pass
    def encode(self, batch, pairs: bool = False) -> dict:
        """The chart of every sentence fused with its own video, or (``pairs``) with every video of
        the batch: then ``H, S, HU, SU, pi, s_root`` are ``[B_s, B_v, ...]`` (sentence a, video b)
        and ``own`` picks the diagonal. Without the fusion (``svhu=False``) a sentence's chart is
        the same for every video and is computed once."""
        cfg = self.cfg
        n = self.lengths(batch)
        B = len(n)
        L = int(n.max())
        tokens = batch["tokens"][:, :L]
        tables = chart_tables(L, cfg.parents)
        span = tables["span"].to(tokens.device)
        valid = span[None, :, 1] < n[:, None]  # [B, C]
        tubes = self.tubes_of(batch)
        X, xok = self.tube_frames(batch, tubes)
        Fv, tube_ok = self.pool_tubes(X, xok)  # whole-video tubes
        leaves = self.leaves(tokens)
        H1, S1, R1 = self.inside(leaves, tables)
        bi = torch.arange(B, device=n.device)
        fused = cfg.svhu
        sa, vb = (bi.repeat_interleave(B), bi.repeat(B)) if pairs and fused else (bi, bi)  # chart rows
        logs = {}
        if fused:
            A = torch.einsum("pcd,pmd->pcm", H1[sa], Fv[vb])  # Eq. 5
            Att, keep = structural_attention(A, valid[sa], tables, self.alpha, self.beta, cfg.delta, cfg.att_context)
            probs = Att.masked_fill(~tube_ok[vb][:, None], NEG).softmax(-1)
            drop = self.att_drop(torch.ones_like(probs[:B]))  # one dropout mask per sentence, shared by its pairs
            fuse = (probs * drop[sa]) @ Fv[vb]  # Eq. 9
            H, S, R = self.inside(leaves[sa], tables, fuse, cfg.lam)  # Eq. 10 + pass 2
            rel = tables["related"].to(keep.device)[None] & valid[sa][:, None] & valid[sa][..., None]
            rel = rel & ~torch.eye(rel.shape[1], dtype=torch.bool, device=rel.device)
            logs["dropped"] = float(((rel & ~keep).sum() / rel.sum().clamp(min=1)).detach())
        else:
            H, S, R = H1, S1, R1
        vf = valid[sa].to(H.dtype)
        H, S = H * vf[..., None], S * vf
        HU, SU = self.outside(H, S, R, n[sa], tables)
        HU, SU = HU * vf[..., None], SU * vf
        root = cell(0, 0, L) + (n - 1) * L - (n - 1) * (n - 2) // 2  # cell(0, n-1)
        s_root = S[torch.arange(len(sa), device=n.device), root[sa]]
        raw = S + SU - s_root[:, None]
        ok = valid[sa]
        logs["pi_clamped"] = float(((raw > PI_CLAMP) & ok).sum())
        logs["pi_max"] = float(raw.detach().masked_fill(~ok, NEG).max().exp())
        pi = torch.exp(raw.clamp(max=PI_CLAMP)) * vf
        chart = dict(H=H, S=S, HU=HU, SU=SU, pi=pi, s_root=s_root, rules=R)
        if pairs:  # [B * B, ...] -> [B_s, B_v, ...] (a sentence's chart repeated without the fusion)
            chart = {k: (v.view(B, B, *v.shape[1:]) if fused else v[:, None].expand(B, B, *v.shape[1:]))
                     for k, v in chart.items()}
        return dict(n=n, L=L, tokens=tokens, tables=tables, valid=valid, tubes=tubes, X=X, xok=xok, root=root,
                    pairs=pairs, logs=logs, **chart)

    @staticmethod
    def own(e: dict, key: str) -> torch.Tensor:
        """``e[key]`` of each sentence with its own video."""
        x = e[key]
        if not e["pairs"]:
            return x
        bi = torch.arange(x.shape[0], device=x.device)
        return x[bi, bi]

    def summary(self, e: dict) -> torch.Tensor:
        """TL-1's ``q = L2norm(sum pi (r~ + r^U) / sum pi)``: ``[B, D]`` or ``[B_s, B_v, D]``."""
        w = e["pi"]
        return l2norm((w[..., None] * (e["H"] + e["HU"])).sum(-2) / w.sum(-1, keepdim=True).clamp(min=1e-12))

    def same_video(self, batch) -> torch.Tensor:
        v = batch["video_index"]
        same = v[:, None] == v[None, :]
        if not self.cfg.mask_same_video:
            same = torch.eye(len(v), dtype=torch.bool, device=v.device)
        return same

    def crop(self, e: dict, start: torch.Tensor, end: torch.Tensor):
        """Tubes pooled over each video's clip: ``start, end [B]`` (own) or ``[B_s, B_v]`` (per pair)."""
        T = e["X"].shape[1]
        t = torch.arange(T, device=start.device)
        frames = (t >= start[..., None]) & (t <= end[..., None])
        return self.pool_tubes(e["X"], e["xok"], frames)

    # ------------------------------------------------------------------ losses
    def losses(self, batch) -> tuple[torch.Tensor, dict]:
        terms, logs = self.terms(batch)
        return sum(terms.values()), logs

    def loss_terms(self, batch) -> dict[str, torch.Tensor]:
        """The engine's gradient probe (:func:`grounding.engine.grad_probe`): :meth:`terms` without
        side effects (the reconstruction's unigram counts are left as they are)."""
        return self.terms(batch, count=False)[0]

    def terms(self, batch, count: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
        """The weighted terms of the training loss (``word``: mu l_word, ``phrase``, ``rec``: w_rec
        L_rec, and with TL-1/TL-2 ``tmp``: w_tmp L_tmp), whose sum is the loss, and the logs;
        ``count`` adds the batch's tokens to the unigram counts (in training)."""
        cfg = self.cfg
        pairs = cfg.refuse_negatives
        e = self.encode(batch, pairs=pairs)
        B = len(e["n"])
        if B < 2:
            raise ValueError("WINNER's contrastive losses need batches of at least two sentences")
        same = self.same_video(batch)
        start, end, l_tmp = self.temporal(batch, self.summary(e), same)
        Fh, tok = self.crop(e, start.detach(), end.detach())  # [(B_s,) B_v, M, D]
        Z = e["H"] + e["HU"]  # [(B_s,) B, C, D]
        if pairs:  # every pair scored by its own chart and its own clip
            sx = torch.einsum("abcd,abmd->abcm", Z, Fh).masked_fill(~tok[:, :, None], NEG)
        else:  # each sentence's own chart against every video cropped to that video's own clip
            sx = torch.einsum("acd,bmd->abcm", Z, Fh).masked_fill(~tok[None, :, None], NEG)
        sx = sx.max(-1).values  # [B_s, B_v, C]
        valid = e["valid"]
        L = e["L"]
        # word level (Eq. 18): leaves are cells 0..L-1
        l_word = word_loss(sx[:, :, :L], valid[:, :L], same)
        # phrase level (Eqs. 19-20)
        if cfg.span_weight == "marginal":
            w = e["pi"]
        else:
            r = e["s_root"]
            w = e["S"] * e["SU"] / torch.where(r.abs() < 1e-8, torch.full_like(r, 1e-8), r)[..., None]
        phr = valid.clone()
        phr[:, :L] = False  # spans with i < j only
        if cfg.dsa:
            l_phrase = phrase_loss(sx, w, valid, phr, same, cfg.gamma, cfg.phrase_negatives)
        else:
            l_phrase = sx.new_zeros(())
        l_rec = self.reconstruction(e, batch, count)
        terms = {"word": cfg.mu * l_word, "phrase": l_phrase, "rec": cfg.w_rec * l_rec}
        logs = {"loss_word": float(l_word.detach()), "loss_phrase": float(l_phrase.detach()),
                "loss_rec": float(l_rec.detach()), **e["logs"]}
        if l_tmp is not None:
            terms["tmp"] = cfg.w_tmp * l_tmp
            logs["loss_tmp"] = float(l_tmp.detach())
        return terms, logs

    def reconstruction(self, e: dict, batch, count: bool = True) -> torch.Tensor:
        """Sampled softmax over ``k_neg`` shared negatives, from the leaves' outside vectors (§3.5)."""
        tokens, L = e["tokens"], e["L"]
        lv = e["valid"][:, :L]
        if self.training and count:
            with torch.no_grad():
                self.unigram += torch.bincount(tokens[lv], minlength=len(self.unigram)).to(self.unigram.dtype)
        p = self.unigram.pow(0.75)
        p[0] = 0  # never the padding id
        k = min(self.cfg.k_neg, int((p > 0).sum()))
        negs = torch.multinomial(p, k, replacement=False)
        hu = self.own(e, "HU")[:, :L]  # [B, L, D]
        pos = (hu * self.rec_proj(self.word_vectors[tokens])).sum(-1, keepdim=True)  # [B, L, 1]
        ng = hu @ self.rec_proj(self.word_vectors[negs]).T  # [B, L, k]
        nll = -torch.cat([pos, ng], -1).log_softmax(-1)[..., 0]
        return (nll * lv).sum() / lv.sum().clamp(min=1)

    # ------------------------------------------------------------------ interface
    def forward(self, batch):
        return self.losses(batch)

    @torch.no_grad()
    def predict(self, batch) -> dict:
        e = self.encode(batch)
        same = self.same_video(batch)
        mode = None if self.cfg.test_segment == "model" else self.cfg.test_segment
        start, end, _ = self.temporal(batch, self.summary(e), same, mode)
        Fh, tok = self.crop(e, start, end)
        n = e["n"]
        B = len(n)
        bi = torch.arange(B, device=n.device)
        if self.cfg.subject_node == "root":
            node = e["root"]
        else:
            sp = batch["subject_pos"]
            node = torch.where((sp >= 0) & (sp < n), sp, torch.zeros_like(sp))
            if self.cfg.question_node == "wh":
                node = torch.where(batch["sentence_form"] == 1, torch.zeros_like(node), node)
        z = (e["H"] + e["HU"])[bi, node]  # [B, D]
        scores = torch.einsum("bd,bmd->bm", z, Fh).masked_fill(~tok, NEG)
        m = scores.argmax(-1)
        proposal = e["tubes"][bi, m].clamp(min=0)  # [B, T]
        return {"segment": torch.stack([start, end + 1], -1).long(), "proposal": proposal.long(),
                "scores": scores, "tube": m, "node": node}
