"""The held-out capture (real tcpdump regression frames, many malformed) through the real agent.

tests/helpers/heldout_pcap.py computes the truth with its own parser (rules in the corpus's SOURCE.md)
and replays every frame over a veth to the agent binary; every checked flow and the interface
totals must match exactly.
"""

import os

import pytest

from tests.conftest import need
from tests.helpers import heldout_pcap

pytestmark = pytest.mark.kernel


def test_truth_matches_the_corpus_description():
    if not os.path.exists(heldout_pcap.DEFAULT_PCAP):
        pytest.skip("held-out corpus not present beside the repository (shared/heldout)")
    frames = heldout_pcap.read_pcap(heldout_pcap.DEFAULT_PCAP)
    expected, unchecked = heldout_pcap.truth(frames)
    # the numbers SOURCE.md states, computed independently of our parser
    assert (len(frames), sum(map(len, frames))) == (8389, 1_604_935)
    assert len(expected) == 418 and len(unchecked) == 4
    assert sum(v[0] for v in expected.values()) == 2870
    assert sum(v[1] for v in expected.values()) == 675_635


def test_agent_matches_the_truth_on_the_heldout_capture():
    if not os.path.exists(heldout_pcap.DEFAULT_PCAP):
        pytest.skip("held-out corpus not present beside the repository (shared/heldout)")
    need(os.geteuid() == 0, "kernel tests need root")
    problems, summary = heldout_pcap.compare(heldout_pcap.read_pcap(heldout_pcap.DEFAULT_PCAP))
    assert not problems, "\n".join(problems[:20])
    assert summary["flows_checked"] == 418
