"""``causal``'s string options on the command line: pinned as typed, a bad value is one line that
names what is allowed (the sweep exits 2 before anything starts). No Ray is started here."""

from __future__ import annotations

import pytest

from orchestration.cli.sweep_args import ConfigError, help_text, parse


def test_options_are_pinned_and_validated():
    cfg = parse(["method=causal", "model.intervention=paper", "model.protocol=joint", "model.acl_queries=one",
                 "model.w_deconf=0.5"])
    assert cfg.model == {"intervention": "paper", "protocol": "joint", "acl_queries": "one", "w_deconf": 0.5}
    with pytest.raises(ConfigError, match=r"model.intervention='eq10' is not an option; allowed: code, paper"):
        parse(["method=causal", "model.intervention=eq10"])
    with pytest.raises(ConfigError, match="negatives=.random. is not an option; allowed: next, disjoint"):
        parse(["method=causal", "model.negatives=random"])


def test_help_lists_every_option_with_its_default():
    text = help_text("causal")
    for name, default in (("protocol", "staged"), ("intervention", "code"), ("bank_update", "code"),
                          ("acl_queries", "all"), ("bda_form", "code"), ("negatives", "disjoint"),
                          ("w_spatial", "0.5"), ("w_temporal", "0.5"), ("w_deconf", "1.0")):
        line = next(l for l in text.splitlines() if l.strip().startswith(f"model.{name} "))
        assert line.split()[1] == default, line
