"""The vote decision."""

from caslie.data.votes import decide


def test_mv_over_a_voter_subset_and_tie_rule():
    voters = ["a", "b"]
    assert decide({"a": "yes", "b": "yes"}, voters, "no")
    assert not decide({"a": "yes", "b": "no"}, voters, "no")
    assert decide({"a": "yes", "b": "no"}, voters, "yes")
    assert not decide({"a": "no", "b": "no", "c": "yes"}, voters, "yes")  # c is not consulted


def test_plurality_is_the_references_counter_over_voters_in_order():
    voters = ["llama-3b", "llama-8b", "llama-vl", "mistral", "phi"]
    votes = dict(zip(voters, ["yes", "the", "no", "no", "yes"], strict=True))
    assert decide(votes, voters, rule="plurality")  # 2 yes, 2 no: the earliest answer wins
    assert not decide(votes, voters, rule="majority")  # 2 yes of 5
    votes["llama-3b"] = "no"
    assert not decide(votes, voters, rule="plurality")
    assert decide(dict(zip("abc", ["yes", "x", "y"], strict=True)), list("abc"), rule="plurality")
