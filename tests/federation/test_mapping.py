"""Claim mapping: whole-value matching, refused characters, and names that never collide."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tessera.container import Services
from tessera.federation.mapping import map_claims
from tessera.federation.schemas import MappingRule
from tessera.oauth.rfc7523_jwt_bearer_grant import GRANT_TYPE

GLOB_RULE = {"match": {"repository": {"glob": "octo-org/*"}},
             "identity": "pipeline/ci-{repository}"}
REPO = "octo-org/octo-repo"


def outcome(rules: list[dict[str, Any]], claims: dict[str, Any]) -> str | None:
    """The identity a token's claims map to; "refused" when the token is refused outright."""
    try:
        return map_claims(rules, claims)
    except Exception:  # noqa: BLE001 - any refusal will do; what matters is no identity
        return "refused"


# Values another repository (or a forged-looking claim) could hold: each must map to an
# identity of its own, or to none, never to octo-org/octo-repo's.
LOOKALIKES = {
    "trailing hyphen": f"{REPO}-",
    "trailing dot": f"{REPO}.",
    "trailing newline": f"{REPO}\n",
    "upper case": "octo-org/Octo-Repo",
    "space for hyphen": "octo-org/octo repo",
    "trailing NUL": "octo-org/octo-repo\x00",
    "zero-width space": "octo-org/octo-repo\u200b",
    "right-to-left override": "octo-org/octo-repo\u202e",
    "line separator": "octo-org/octo-repo\u2028",
    "slash for hyphen": "octo-org/octo/repo",
}


@pytest.mark.parametrize("case", sorted(LOOKALIKES))
def test_lookalike_claim_never_maps_to_another_repositorys_identity(case: str) -> None:
    legit = map_claims([GLOB_RULE], {"repository": REPO})
    assert legit is not None
    assert outcome([GLOB_RULE], {"repository": LOOKALIKES[case]}) != legit


def test_values_past_the_name_length_do_not_collide_by_truncation() -> None:
    base = "octo-org/" + "r" * 140
    rule = {"match": {"repository": {"glob": "octo-org/*"}}, "identity": "{repository}"}
    # Two values that differ past the 128th character: neither is cut down to a shared name.
    assert outcome([rule], {"repository": base + "a"}) is None
    assert outcome([rule], {"repository": base + "b"}) is None


@pytest.mark.parametrize("value", ["x\n", "x\r", "\x00x", "x\t", "x\u200d", "x\ufeff",
                                   "x\u2029", "x\ud800"])
def test_refuses_token_when_a_matched_claim_holds_a_control_or_format_character(
        value: str) -> None:
    rules = [{"match": {"sub": "x"}, "identity": "trainer"},
             {"match": {"sub": {"glob": "*"}}, "identity": "fallback"}]
    assert outcome(rules, {"sub": value}) == "refused"


def test_refuses_token_when_a_templated_claim_holds_a_control_character() -> None:
    rules = [{"match": {"repository_owner": "octo-org"}, "identity": "ci-{repository}"}]
    assert outcome(rules, {"repository_owner": "octo-org",
                           "repository": "octo-org/a\nb"}) == "refused"


@pytest.mark.parametrize("value,expected", [
    ("octo-org/octo-repo", "pipeline/ci-octo-org_octo-repo"),
    ("octo-org/octo.repo", "pipeline/ci-octo-org_octo.repo"),
    ("octo-org/octo-repo-", "pipeline/ci-octo-org_octo-repo-"),
    ("octo-org/", "pipeline/ci-octo-org_"),
    ("octo-org/a/b", "pipeline/ci-octo-org_a_b"),
    ("octo-org/Octo", None),
    ("octo-org/octo_repo", None),
    ("octo-org", None),          # the glob covers the whole value: no match
    ("xocto-org/a", None),
    ("octo-org/a b", None),
])
def test_glob_and_template_over_the_whole_value(value: str, expected: str | None) -> None:
    assert map_claims([GLOB_RULE], {"repository": value}) == expected


@pytest.mark.parametrize("pattern,value,matches", [
    ("refs/heads/*", "refs/heads/main", True),
    ("refs/heads/*", "refs/heads/feature/x", True),
    ("refs/heads/*", "refs/tags/v1", False),
    ("refs/heads/*", "xrefs/heads/main", False),
    ("refs/heads/?", "refs/heads/a", True),
    ("refs/heads/?", "refs/heads/ab", False),
    ("v[0-9]", "v7", True),
    ("v[!0-9]", "v7", False),
    ("a.b", "axb", False),       # `.` is literal, not "any character"
    ("a+", "aa", False),         # regex syntax is literal
])
def test_glob_matches_only_the_entire_value(pattern: str, value: str, matches: bool) -> None:
    rule = {"match": {"ref": {"glob": pattern}}, "identity": "trainer"}
    assert (map_claims([rule], {"ref": value}) == "trainer") is matches


@pytest.mark.parametrize("rule", [
    {"match": {"sub": "x"}, "identity": "trainer\n"},
    {"match": {"sub": "x\n"}, "identity": "trainer"},
    {"match": {"sub": ["x", "y\u202e"]}, "identity": "trainer"},
    {"match": {"sub": ""}, "identity": "trainer"},
    {"match": {"sub": {"glob": "x\n*"}}, "identity": "trainer"},
    {"match": {"sub": {"glob": "[a-"}}, "identity": "trainer"},
    {"match": {"owner": {"glob": "*"}}, "identity": "ci-{owner}-{repo}"},
    {"match": {"owner": ["a", "b"], "repo": {"glob": "*"}}, "identity": "ci-{owner}-{repo}"},
])
def test_rejects_rules_that_could_match_or_name_ambiguously(rule: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        MappingRule(**rule)


def test_accepts_a_template_whose_other_claims_are_pinned() -> None:
    rule = MappingRule(match={"owner": "acme", "ref": "refs/heads/main"},
                       identity="pipeline/ci-{repo}-{ref}")
    assert map_claims([rule.model_dump()], {"owner": "acme", "ref": "refs/heads/main",
                                            "repo": "acme/web"}) \
        == "pipeline/ci-acme_web-refs_heads_main"


def test_stored_rule_with_two_varying_placeholders_never_matches() -> None:
    # A rule saved before registration checked this: skipped, so it cannot collide.
    rules = [{"match": {"owner": {"glob": "*"}}, "identity": "ci-{owner}-{repo}"}]
    assert map_claims(rules, {"owner": "a-b", "repo": "c"}) is None


def test_lookalike_repository_is_refused_at_the_token_endpoint(
        fed_services: Services, app_client: TestClient, admin_headers: dict[str, str],
        oidc_issuer: Any, make_identity: Any) -> None:
    legit = map_claims([GLOB_RULE], {"repository": REPO})
    assert legit is not None
    kind, _, name = legit.partition("/")
    ci = make_identity(name, kind=kind)
    resp = app_client.post("/v1/federation/issuers", headers=admin_headers, json={
        "name": "ci", "issuer": oidc_issuer.url, "audiences": ["tessera"],
        "rules": [GLOB_RULE]})
    assert resp.status_code == 201, resp.text

    def exchange(repository: str) -> Any:
        return app_client.post("/oauth2/token", data={
            "grant_type": GRANT_TYPE, "assertion": oidc_issuer.token(repository=repository)})

    ok = exchange(REPO)
    assert ok.status_code == 200, ok.text
    assert fed_services.tokens.authenticate_bearer(ok.json()["access_token"])["sub"] == ci.id
    for value in (f"{REPO}-", f"{REPO}.", f"{REPO}\n", "octo-org/octo_repo"):
        resp = exchange(value)
        assert resp.status_code == 400, (value, resp.text)
        assert resp.json()["error"] == "invalid_grant"
    with fed_services.sessions() as s:
        reasons = [e.reasons[0] for e in fed_services.audit.events(
            s, type="oauth.token.refused")]
    assert any("control or format character" in r for r in reasons)
    assert any("no mapping rule" in r or "does not exist" in r for r in reasons)
