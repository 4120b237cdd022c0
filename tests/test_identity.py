"""Who is asking and what they may play (api/identity.py): user tokens, the admin secret, limits."""

import base64
import dataclasses
import hashlib
import hmac
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from api.config import Config
from api.errors import BadRequest, Forbidden, InvalidCredentials, InvalidToken
from api.identity import MAX_LIMIT_CLAIM, Caller, Identity
from api.sessions import Limits

ISSUER = "https://idp.example"
AUDIENCE = "concurrency"
INJECTED = "(a JwkSource given to Identity)"  # user-token mode; the source itself is passed in
ADMIN_SECRET = "s3cret-admin"
PLANS = {"plan_limits": {"basic": 1, "premium": 4}, "plan_at_limit": {"premium": "evict-oldest"}}


class IdpKey:
    """A key of the identity provider: signs user tokens, and is what the JWKS source hands out."""

    def __init__(self, kid, alg, private_key, exporter):
        self.kid, self.alg, self.private_key = kid, alg, private_key
        self.jwk = jwt.PyJWK({**exporter.to_jwk(private_key.public_key(), as_dict=True), "kid": kid}, alg)

    def token(self, **claims):
        """Sign a user token: valid for `ann` for an hour unless `claims` say otherwise (None drops one)."""
        now = int(time.time())
        defaults = {"iss": ISSUER, "aud": AUDIENCE, "sub": "ann", "iat": now, "exp": now + 3600}
        payload = {k: v for k, v in {**defaults, **claims}.items() if v is not None}
        return jwt.encode(payload, self.private_key, algorithm=self.alg, headers={"kid": self.kid})


class Jwks:
    """A JwkSource over fixed keys, as PyJWKClient is over the provider's JWKS."""

    def __init__(self, *keys):
        self._keys = {key.kid: key.jwk for key in keys}

    def get_signing_key_from_jwt(self, token):
        kid = jwt.get_unverified_header(token).get("kid")
        if kid not in self._keys:
            raise jwt.PyJWKClientError(f"no key with kid {kid!r}")
        return self._keys[kid]


@pytest.fixture(scope="module")
def ec_key():
    return IdpKey("idp-ec", "ES256", ec.generate_private_key(ec.SECP256R1()), ECAlgorithm)


@pytest.fixture(scope="module")
def rsa_key():
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return IdpKey("idp-rsa", "RS256", private_key, RSAAlgorithm)


@pytest.fixture
def user_config():
    return Config(user_jwks=INJECTED, user_issuer=ISSUER, user_audience=AUDIENCE)


@pytest.fixture
def identity(user_config, ec_key, rsa_key):
    """Identity with user tokens required."""
    return Identity(user_config, jwk_source=Jwks(ec_key, rsa_key))


def bearer(token):
    """Return the Authorization header of a Bearer token."""
    return f"Bearer {token}"


def basic(name, secret):
    """Return the Authorization header of a trusted caller's credential."""
    return "Basic " + base64.b64encode(f"{name}:{secret}".encode()).decode()


def no_auth():
    return None


# -- limits ---------------------------------------------------------------------------------------


def test_limits_default_to_the_config():
    config = Config(max_streams=2, stream_limit=1, at_limit="evict-oldest")
    identity = Identity(config)
    assert identity.limits() == Limits(2, 1, True)
    assert identity.limits({}) == Limits(2, 1, True)
    assert identity.limits({"sub": "ann"}) == Limits(2, 1, True)


@pytest.mark.parametrize("climit", [1, 5, 100])
def test_limit_claim_sets_the_limit(climit):
    assert Identity(Config(max_streams=3)).limits({"climit": climit}).limit == climit


@pytest.mark.parametrize("climit", [0, -1, True, 2.0, "5", None, [5], {"n": 5}])
def test_limit_claim_counts_only_as_a_positive_int(climit):
    assert Identity(Config(max_streams=3)).limits({"climit": climit}) == Limits(3)


@pytest.mark.parametrize("name", ["climit", "dlimit"])
def test_a_limit_claim_over_the_maximum_refuses_the_token(name):
    """Its digits would make session tokens too long to accept: a start then a 401 at every heartbeat."""
    identity = Identity(Config(max_streams=3))
    assert identity.limits({name: MAX_LIMIT_CLAIM}) != Limits(3)
    with pytest.raises(InvalidToken, match=name):
        identity.limits({name: MAX_LIMIT_CLAIM + 1})


def test_limit_claim_name_comes_from_the_config():
    identity = Identity(Config(max_streams=3, limit_claim="streams"))
    assert identity.limits({"streams": 7}).limit == 7
    assert identity.limits({"climit": 7}).limit == 3


@pytest.mark.parametrize(
    ("plan", "expected"),
    [("basic", Limits(1)), ("premium", Limits(4, 0, True)), ("unknown", Limits(3)), (None, Limits(3))],
)
def test_plan_claim_picks_limit_and_behaviour(plan, expected):
    identity = Identity(Config(max_streams=3, **PLANS))
    assert identity.limits({"plan": plan, "sub": "ann"}) == expected


@pytest.mark.parametrize("plan", [["premium"], {"premium": 1}, 4, True])
def test_plan_claim_that_is_not_a_string_is_ignored(plan):
    assert Identity(Config(max_streams=3, **PLANS)).limits({"plan": plan}) == Limits(3)


def test_claims_win_over_the_plan():
    identity = Identity(Config(max_streams=3, **PLANS))
    assert identity.limits({"plan": "premium", "climit": 2}) == Limits(2, 0, True)
    assert identity.limits({"plan": "premium", "cbeh": "reject"}) == Limits(4, 0, False)
    assert identity.limits({"plan": "basic", "cbeh": "evict-oldest"}) == Limits(1, 0, True)


@pytest.mark.parametrize("cbeh", ["evict", "EVICT-OLDEST", ["evict-oldest"], 1, True])
def test_bad_behaviour_claims_are_ignored(cbeh):
    identity = Identity(Config(max_streams=3, **PLANS))
    assert identity.limits({"plan": "premium", "cbeh": cbeh}) == Limits(4, 0, True)
    assert identity.limits({"cbeh": cbeh}) == Limits(3, 0, False)


DEVICE_PLANS = {"plan_device_limits": {"basic": 1, "family": 4}, "device_limit": 2, **PLANS}


def test_device_limit_defaults_to_the_config():
    assert Identity(Config()).limits().device_limit == 0  # no device limit unless configured
    identity = Identity(Config(max_streams=3, device_limit=2))
    assert identity.limits() == identity.limits({"sub": "ann"}) == Limits(3, device_limit=2)


@pytest.mark.parametrize(
    ("claims", "device_limit"),
    [
        ({}, 2),
        ({"plan": "basic"}, 1),
        ({"plan": "family"}, 4),
        ({"plan": "premium"}, 2),  # a plan without a device limit of its own
        ({"dlimit": 3}, 3),
        ({"dlimit": 3, "plan": "basic"}, 3),  # the claim wins over the plan
        ({"climit": 9, "plan": "basic"}, 1),  # the stream limit claim is not the device limit
    ],
)
def test_device_limit_from_the_claim_else_the_plan_else_the_config(claims, device_limit):
    assert Identity(Config(max_streams=3, **DEVICE_PLANS)).limits(claims).device_limit == device_limit


@pytest.mark.parametrize("dlimit", [0, -1, True, 2.0, "5", None, [5], {"n": 5}])
def test_device_limit_claim_counts_only_as_a_positive_int(dlimit):
    identity = Identity(Config(max_streams=3, **DEVICE_PLANS))
    assert identity.limits({"dlimit": dlimit}) == Limits(3, device_limit=2)
    assert identity.limits({"dlimit": dlimit, "plan": "basic"}) == Limits(1, device_limit=1)


def test_device_limit_claim_name_comes_from_the_config():
    identity = Identity(Config(device_limit_claim="devices"))
    assert identity.limits({"devices": 2}).device_limit == 2
    assert identity.limits({"dlimit": 2}).device_limit == 0


def test_a_user_token_brings_its_device_limit_to_a_start(user_config, ec_key):
    identity = Identity(dataclasses.replace(user_config, **DEVICE_PLANS), Jwks(ec_key))
    assert identity.start_user(bearer(ec_key.token(dlimit=5)), None)[1] == Limits(3, device_limit=5)
    assert identity.start_user(bearer(ec_key.token(plan="family")), None)[1] == Limits(3, device_limit=4)


def test_stream_limit_always_comes_from_the_config():
    identity = Identity(Config(stream_limit=2, **PLANS))
    assert identity.limits({"plan": "premium", "climit": 9}).stream_limit == 2


# -- anonymous mode ---------------------------------------------------------------------------------


def test_anonymous_start_needs_a_user_id():
    identity = Identity(Config())
    assert identity.anonymous and identity.modes == ("anonymous",)
    with pytest.raises(BadRequest) as refused:
        identity.start_user(no_auth(), None)
    assert refused.value.details == {"field": "userId"}


def test_anonymous_start_takes_the_body_user_and_default_limits():
    identity = Identity(Config(max_streams=2))
    assert identity.start_user(no_auth(), "ann") == ("ann", Limits(2), Caller("anonymous", vouched=False))


def test_anonymous_mode_refuses_credentials_it_cannot_check(ec_key):
    with pytest.raises(InvalidToken, match="takes no credentials"):
        Identity(Config()).start_user(bearer(ec_key.token()), "ann")


# -- user tokens ------------------------------------------------------------------------------------


@pytest.mark.parametrize("key_name", ["ec_key", "rsa_key"])
def test_valid_user_token_gives_the_user_and_their_limits(request, identity, key_name):
    key = request.getfixturevalue(key_name)
    assert not identity.anonymous and identity.modes == ("user-token",)
    assert identity.start_user(bearer(key.token(climit=2)), None)[:2] == ("ann", Limits(2))
    assert identity.start_user(bearer(key.token(plan="x")), "ann")[:2] == ("ann", Limits(3))


@pytest.mark.parametrize(
    ("claims", "problem"),
    [
        ({"iss": "https://other-idp.example"}, "issuer"),
        ({"iss": "https://idp.exampl"}, "issuer"),
        ({"aud": "another-app"}, "(?i)audience"),
        ({"exp": int(time.time()) - 60}, "expired"),
        ({"sub": None}, "sub"),
        ({"exp": None}, "exp"),
        ({"iss": None}, "iss"),
        ({"aud": None}, "aud"),
    ],
)
def test_user_token_with_a_bad_claim_is_refused(identity, ec_key, claims, problem):
    with pytest.raises(InvalidToken, match=problem):
        identity.start_user(bearer(ec_key.token(**claims)), None)


def test_expiry_allows_the_configured_leeway(ec_key):
    identity = Identity(
        Config(user_jwks=INJECTED, user_issuer=ISSUER, user_audience=AUDIENCE, token_leeway_s=30),
        Jwks(ec_key),
    )
    assert identity.start_user(bearer(ec_key.token(exp=int(time.time()) - 10)), None)[0] == "ann"
    with pytest.raises(InvalidToken, match="expired"):
        identity.start_user(bearer(ec_key.token(exp=int(time.time()) - 90)), None)


def test_user_token_algorithm_must_be_allowed(user_config, ec_key, rsa_key):
    config = dataclasses.replace(user_config, user_algorithms=("ES256",))
    identity = Identity(config, jwk_source=Jwks(ec_key, rsa_key))
    assert identity.start_user(bearer(ec_key.token()), None)[0] == "ann"
    with pytest.raises(InvalidToken, match="algorithm is not allowed"):
        identity.start_user(bearer(rsa_key.token()), None)


@pytest.mark.parametrize(("alg", "secret"), [("HS256", "a-shared-secret-of-32-bytes-long"), ("none", None)])
def test_user_token_header_cannot_choose_another_algorithm(identity, ec_key, alg, secret):
    """Refuse a token whose header names another algorithm than its key's (HMAC with a public value, none)."""
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "ann", "exp": now + 60}
    token = jwt.encode(claims, secret, algorithm=alg, headers={"kid": ec_key.kid})
    with pytest.raises(InvalidToken, match="user token is invalid"):
        identity.start_user(bearer(token), None)


def test_user_token_with_an_unknown_key_or_a_bad_signature_is_refused(identity, ec_key):
    stranger = IdpKey("idp-ec", "ES256", ec.generate_private_key(ec.SECP256R1()), ECAlgorithm)
    with pytest.raises(InvalidToken, match="Signature verification failed"):
        identity.start_user(bearer(stranger.token()), None)
    unknown = IdpKey("nobody", "ES256", ec.generate_private_key(ec.SECP256R1()), ECAlgorithm)
    with pytest.raises(InvalidToken, match="no key with kid"):
        identity.start_user(bearer(unknown.token()), None)


@pytest.mark.parametrize("header", [None, "Basic YW5uOnB3", "Bearer", "Bearer not-a-jwt"])
def test_start_without_a_user_token_is_refused(identity, header):
    headers = {"Authorization": header} if header else {}
    with pytest.raises((InvalidToken, InvalidCredentials)):
        identity.start_user(headers.get("Authorization"), "ann")


def test_body_user_must_match_the_token(identity, ec_key):
    with pytest.raises(Forbidden, match="does not match") as refused:
        identity.start_user(bearer(ec_key.token(sub="ann")), "bob")
    assert refused.value.details == {"field": "userId"}


@pytest.mark.parametrize("sub", ["", "x" * 9, 7, ["ann"], "\ud800", "ann\x00"])
def test_sub_must_be_a_short_user_id(ec_key, sub):
    identity = Identity(
        Config(user_jwks=INJECTED, user_issuer=ISSUER, user_audience=AUDIENCE, max_id_chars=8), Jwks(ec_key)
    )
    assert identity.start_user(bearer(ec_key.token(sub="x" * 8)), None)[0] == "x" * 8
    with pytest.raises(InvalidToken):
        identity.start_user(bearer(ec_key.token(sub=sub)), None)


# -- managing a user's sessions ----------------------------------------------------------------------


def test_owner_routes_are_off_without_admin_secret_or_authentication(ec_key):
    identity = Identity(Config())
    for req in (no_auth(), bearer(ADMIN_SECRET), bearer(ec_key.token())):
        with pytest.raises(Forbidden, match="not enabled"):
            identity.authorize_owner(req, "ann")


def test_admin_secret_may_manage_anyone():
    identity = Identity(Config(admin_token=ADMIN_SECRET))
    assert identity.authorize_owner(bearer(ADMIN_SECRET), "ann") == Caller("admin", vouched=True)
    assert identity.authorize_owner(bearer(ADMIN_SECRET), "bob") == Caller("admin", vouched=True)
    for wrong in ("s3cret", ADMIN_SECRET + "x", ADMIN_SECRET.upper()):
        with pytest.raises(InvalidToken, match="admin secret is wrong"):
            identity.authorize_owner(bearer(wrong), "ann")
    with pytest.raises(InvalidToken):
        identity.authorize_owner(no_auth(), "ann")


def test_admin_secret_is_compared_in_constant_time(monkeypatch):
    compared = []

    def compare_digest(a, b):
        compared.append((a, b))
        return real(a, b)

    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", compare_digest)
    identity = Identity(Config(admin_token=ADMIN_SECRET))
    with pytest.raises(InvalidToken):
        identity.authorize_owner(bearer("guess"), "ann")
    identity.authorize_owner(bearer(ADMIN_SECRET), "ann")
    digest = hashlib.sha256(ADMIN_SECRET.encode()).digest()
    assert compared == [(hashlib.sha256(b"guess").digest(), digest), (digest, digest)]


def test_a_user_may_manage_only_their_own_sessions(identity, ec_key):
    assert identity.authorize_owner(bearer(ec_key.token(sub="ann")), "ann") == Caller("user", vouched=True)
    with pytest.raises(Forbidden, match="their own sessions"):
        identity.authorize_owner(bearer(ec_key.token(sub="bob")), "ann")
    with pytest.raises(InvalidToken):
        identity.authorize_owner(bearer(ec_key.token(sub="ann", aud="another-app")), "ann")


def test_with_both_the_admin_secret_and_user_tokens_work(user_config, ec_key):
    identity = Identity(dataclasses.replace(user_config, admin_token=ADMIN_SECRET), Jwks(ec_key))
    assert identity.authorize_owner(bearer(ADMIN_SECRET), "ann") == Caller("admin", vouched=True)
    assert identity.authorize_owner(bearer(ec_key.token(sub="ann")), "ann") == Caller("user", vouched=True)
    with pytest.raises(Forbidden):
        identity.authorize_owner(bearer(ec_key.token(sub="bob")), "ann")
    with pytest.raises(InvalidToken):  # neither the secret nor a user token
        identity.authorize_owner(bearer("s3cret"), "ann")


# -- trusted callers --------------------------------------------------------------------------------

CALLER_SECRET, NEXT_SECRET = "a" * 24, "b" * 24


@pytest.fixture
def callers():
    config = Config(callers=(("playback-api", CALLER_SECRET), ("playback-api", NEXT_SECRET)), max_streams=2)
    return Identity(config)


def test_trusted_callers_speak_for_the_user_in_the_body(callers):
    assert callers.modes == ("trusted-caller",) and not callers.anonymous
    for secret in (CALLER_SECRET, NEXT_SECRET):  # two secrets are valid at once while one is rotated
        user, limits, caller = callers.start_user(basic("playback-api", secret), "ann")
        assert (user, limits, caller) == ("ann", Limits(2), Caller("playback-api", vouched=True))


@pytest.mark.parametrize(
    "header",
    [
        None,
        basic("playback-api", "c" * 24),
        basic("someone-else", CALLER_SECRET),
        basic("playback-api", CALLER_SECRET[:-1]),
        "Basic not-base64!",
        "Basic \xe9\xe9\xe9\xe9",  # header bytes past ASCII, as the server decodes them (latin-1)
        "Basic " + base64.b64encode(b"\xff\xfe:secret").decode(),  # not UTF-8
        "Basic " + base64.b64encode(b"no-colon").decode(),
        bearer(CALLER_SECRET),
    ],
)
def test_a_wrong_or_missing_caller_credential_is_refused(callers, header):
    with pytest.raises((InvalidCredentials, InvalidToken)):
        callers.start_user(header, "ann")


def test_a_trusted_caller_must_name_the_user(callers):
    with pytest.raises(BadRequest) as refused:
        callers.start_user(basic("playback-api", CALLER_SECRET), None)
    assert refused.value.details == {"field": "userId"}


def test_a_trusted_caller_may_manage_any_user(callers):
    assert callers.authorize_owner(basic("playback-api", NEXT_SECRET), "bob") == Caller("playback-api", True)
    with pytest.raises(InvalidCredentials):
        callers.authorize_owner(basic("playback-api", "wrong" * 5), "bob")


def test_caller_secrets_are_compared_in_constant_time(callers, monkeypatch):
    compared = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: compared.append((a, b)) or real(a, b))
    callers.start_user(basic("playback-api", NEXT_SECRET), "ann")
    given = hashlib.sha256(NEXT_SECRET.encode()).digest()
    stored = [hashlib.sha256(s.encode()).digest() for s in (CALLER_SECRET, NEXT_SECRET)]
    assert compared == [(given, stored[0]), (given, stored[1])]  # every secret of the name, always


def test_user_tokens_and_trusted_callers_together(user_config, ec_key):
    config = dataclasses.replace(user_config, callers=(("playback-api", CALLER_SECRET),))
    identity = Identity(config, Jwks(ec_key))
    assert identity.modes == ("user-token", "trusted-caller")
    assert identity.start_user(bearer(ec_key.token(sub="ann")), None)[2] == Caller("user", vouched=True)
    assert identity.start_user(basic("playback-api", CALLER_SECRET), "bob")[:1] == ("bob",)
    with pytest.raises(InvalidToken):
        identity.start_user(None, "bob")
