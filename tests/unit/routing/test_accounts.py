"""The cloud's state per account: labels from credentials, organizations, isolation."""

from __future__ import annotations

from nonstop.config import CloudConfig
from nonstop.routing.accounts import (
    CREDENTIAL_HEADERS,
    MAX_ACCOUNTS,
    ORG_HEADER,
    Accounts,
    credential_of,
)
from nonstop.routing.classify import FailureKind, Verdict
from nonstop.routing.view import CloudState

T0 = 1_800_000_000.0


def accounts(**kw) -> Accounts:
    return Accounts(CloudConfig(), salt=b"salt", clock=lambda: T0, **kw)


def test_credential_from_api_key_or_bearer() -> None:
    assert credential_of([(b"x-api-key", b"sk-ant-1")]) == "sk-ant-1"
    assert credential_of([(b"authorization", b"Bearer sk-ant-oat01-x")]) == "sk-ant-oat01-x"
    assert credential_of([(b"authorization", b"Basic abc")]) == ""
    assert credential_of([]) == ""
    # The first non-empty key wins over a bearer token wherever either stands.
    both = [(b"authorization", b"Bearer oat"), (b"x-api-key", b""), (b"x-api-key", b"k1"), (b"x-api-key", b"k2")]
    assert credential_of(both) == "k1"


def test_credential_pass_collects_the_named_headers() -> None:
    found: dict[str, str] = {}
    headers = [(b"x-a", b"1"), (b"x-api-key", b"sk"), (b"x-b", b"2"), (b"authorization", b"Bearer t")]
    assert credential_of(headers, collect=found, names=frozenset({b"x-b"}) | CREDENTIAL_HEADERS) == "sk"
    assert found == {"x-b": "2"}  # the credential is never collected


def test_labels_are_salted_hashes_never_the_credential() -> None:
    a = accounts()
    label = a.label("sk-ant-api03-secret")
    assert label.startswith("key:") and "secret" not in label and len(label) == 16
    assert a.label("sk-ant-api03-secret") == label  # stable
    assert a.label("sk-ant-api03-other") != label
    assert Accounts(CloudConfig(), salt=b"other").label("sk-ant-api03-secret") != label
    assert a.label("") == ""


def test_one_account_out_leaves_the_other_serving() -> None:
    a = accounts()
    ann, bob = a.label("ann-key"), a.label("bob-key")
    a.get(ann).record_failure(Verdict(FailureKind.SUBSCRIPTION_LIMIT, True, T0 + 3600, "usage limit"))
    assert a.get(ann).state is CloudState.OUT
    assert a.get(bob).state is CloudState.SERVING
    assert a.get(bob).view().state is CloudState.SERVING


def test_keys_of_one_organization_share_its_state() -> None:
    a = accounts()
    k1, k2 = a.label("key-one"), a.label("key-two")
    org1 = a.learn_org(k1, {ORG_HEADER: "org-uuid-1"})
    a.get(org1).record_failure(Verdict(FailureKind.API_KEY_LIMIT, True, T0 + 60, "API rate limit"))
    org2 = a.learn_org(k2, {ORG_HEADER: "org-uuid-1"})
    assert org1 == org2 and org1.startswith("org:") and "org-uuid" not in org1
    assert a.label("key-two") == org1  # later requests with either key use the org's state
    assert a.get(a.label("key-one")).state is CloudState.OUT


def test_changes_name_their_account_and_snapshots_round_trip() -> None:
    seen: list[tuple[str, str]] = []
    a = accounts(on_change=lambda acct, q, why: seen.append((acct, q.state.value)))
    ann = a.label("ann-key")
    a.get(ann).record_failure(Verdict(FailureKind.SUBSCRIPTION_LIMIT, True, T0 + 60, "limit"))
    assert seen == [(ann, "out")]
    b = accounts()
    b.restore(a.snapshot())
    assert b.get(ann).state is CloudState.OUT and b.get(ann).until == T0 + 60
    b.restore({"accounts": {"x": "garbage"}, "orgs": [1]})  # ignored


def test_friendly_names() -> None:
    a = accounts(names={"key:abc": "ann", "def": "bob"})
    assert a.name("key:abc") == "ann" and a.name("key:def") == "bob" and a.name("") == "default"


def test_a_new_key_on_every_request_does_not_grow_the_accounts_without_bound() -> None:
    a = accounts()
    forgotten: list[str] = []
    a.on_forget = forgotten.append
    out = a.label("sk-out")
    a.get(out).record_failure(Verdict(FailureKind.SUBSCRIPTION_LIMIT, True, T0 + 3600, "usage limit"))
    mine = a.label("sk-mine")
    a.get(mine)
    for i in range(MAX_ACCOUNTS + 200):
        a.get(a.label(f"sk-flood-{i}"))
        if i % 50 == 0:
            a.get(mine)  # used now and then: among the most recent, kept
            a.last = a.label(f"sk-flood-{i}")
    assert len(a.states) <= MAX_ACCOUNTS
    assert len(forgotten) >= 200 and len(set(forgotten)) == len(forgotten)
    assert out in a.states and a.get(out).state is CloudState.OUT  # a cloud still out is remembered
    assert mine in a.states and out not in forgotten and mine not in forgotten
    assert "" not in forgotten


def test_when_every_account_is_out_the_oldest_goes() -> None:
    a = accounts()
    first = a.label("sk-0")
    for i in range(MAX_ACCOUNTS + 1):
        a.get(a.label(f"sk-{i}")).record_failure(Verdict(FailureKind.SUBSCRIPTION_LIMIT, True, T0 + 3600, "limit"))
    assert len(a.states) == MAX_ACCOUNTS and first not in a.states
