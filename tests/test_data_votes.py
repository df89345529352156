"""The vote decision."""

from caslie.data.votes import decide


def test_mv_over_a_voter_subset_and_tie_rule():
    voters = ["a", "b"]
    assert decide({"a": "yes", "b": "yes"}, voters, "no")
    assert not decide({"a": "yes", "b": "no"}, voters, "no")
    assert decide({"a": "yes", "b": "no"}, voters, "yes")
    assert not decide({"a": "no", "b": "no", "c": "yes"}, voters, "yes")  # c is not consulted
