"""Configuration (api/config.py): every CONCURRENCY_* variable, how it is parsed, what is refused."""

import ast
import dataclasses
import importlib
import math
import pathlib
import re

import pytest

from api.config import Config, ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG_SOURCE = (ROOT / "api" / "config.py").read_text()
FIELDS = dataclasses.fields(Config)
ENVIRON_FUNCTIONS = ("environ", "environb", "getenv", "getenvb", "putenv", "unsetenv")
ENVIRON_READS = ("get", "setdefault", "pop", "__getitem__", "__contains__")


# -- one explicit variable per field ----------------------------------------------------------------


@pytest.mark.parametrize("field", FIELDS, ids=lambda f: f.name)
def test_every_field_names_its_variable_in_full(field):
    env = field.metadata["env"]
    assert env.startswith("CONCURRENCY_")
    assert f'"{env}"' in CONFIG_SOURCE  # written out, so a grep for the variable finds where it is read
    assert Config.env_name(field.name) == env


def test_no_two_fields_share_a_variable():
    names = [field.metadata["env"] for field in FIELDS]
    assert len(set(names)) == len(names)


README = (ROOT / "README.md").read_text()
DOCS = [ROOT / "README.md", ROOT / "infra" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def readme_settings():
    """The variables the README's configuration table names (`_USER_AUDIENCE` short for the full name)."""
    table = README.split("## Configuration", 1)[1].split("\n\n## ", 1)[0]
    names = set()
    for row in table.splitlines():
        if row.startswith("| `"):
            for short in re.findall(r"`(CONCURRENCY_[A-Z0-9_]+|_[A-Z0-9_]+)`", row.split(" | ")[0]):
                names.add(short if short.startswith("CONCURRENCY") else "CONCURRENCY" + short)
    return names


def test_the_readme_table_names_every_setting():
    assert readme_settings() == {field.metadata["env"] for field in FIELDS}


@pytest.mark.parametrize("path", DOCS, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_the_docs_name_only_real_settings(path):
    """A variable the docs name and the code never reads is a stale sentence (CONCURRENCY_TEST_*: tests')."""
    known = {field.metadata["env"] for field in FIELDS}
    named = set(re.findall(r"CONCURRENCY_[A-Z0-9_]*[A-Z0-9]", path.read_text()))
    assert {name for name in named - known if not name.startswith("CONCURRENCY_TEST_")} == set()


def environ_uses():
    """Return (path, line, how, key) for each use of os.environ or os.getenv in api/ and keys/.

    `how` is read, write, via-config (handed to Config.from_env whole), whole (any other use) or
    import (`from os import environ`); `key` is the variable's name where the source gives it."""
    uses = []
    for path in sorted([*(ROOT / "api").glob("*.py"), *(ROOT / "keys").glob("*.py")]):
        relative = path.relative_to(ROOT).as_posix()
        if relative == "api/config.py":
            continue
        tree = ast.parse(path.read_text(), relative)
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        module = importlib.import_module(relative[:-3].replace("/", "."))
        os_names = {
            alias.asname or alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
            if alias.name == "os"
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "os":
                if any(alias.name in ENVIRON_FUNCTIONS for alias in node.names):
                    uses.append((relative, node.lineno, "import", None))
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in os_names
                and node.attr in ENVIRON_FUNCTIONS
            ):
                how, key = _use(node, parents)
                uses.append((relative, node.lineno, how, key if key is None else _resolve(key, module)))
    return uses


def _use(node, parents):
    """Return (how, key node) of one `os.environ`/`os.getenv` attribute."""
    parent = parents[node]
    if node.attr != "environ":  # os.getenv(name) and friends
        key = parent.args[0] if isinstance(parent, ast.Call) and parent.args else None
        return ("write" if node.attr in ("putenv", "unsetenv") else "read"), key
    if isinstance(parent, ast.Subscript):
        return ("read" if isinstance(parent.ctx, ast.Load) else "write"), parent.slice
    if isinstance(parent, ast.Attribute) and parent.attr in ENVIRON_READS:
        call = parents[parent]
        return "read", call.args[0] if isinstance(call, ast.Call) and call.args else None
    while isinstance(parent, (ast.IfExp, ast.BoolOp)):
        parent = parents[parent]
    if isinstance(parent, ast.Call) and _names(parent.func) == "Config.from_env":
        return "via-config", None
    return "whole", None


def _names(node):
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_names(node.value)}.{node.attr}"
    return None


def _resolve(key, module):
    """Return the variable name a key expression stands for, or the expression's text if unknown."""
    if isinstance(key, ast.Constant):
        return key.value
    if isinstance(key, ast.Name) and isinstance(getattr(module, key.id, None), str):
        return getattr(module, key.id)
    if (
        isinstance(key, ast.Call)
        and _names(key.func) == "Config.env_name"
        and all(isinstance(arg, ast.Constant) for arg in key.args)
    ):
        return Config.env_name(*(arg.value for arg in key.args))
    return ast.unparse(key)


def test_only_config_reads_concurrency_variables():
    # `serve --keys-dir/--threads` pass their values to the workers under the names Config gives them
    allowed_write = ("api/cli.py", "write", "Config.env_name(name)")
    uses = environ_uses()
    wrong = [
        use
        for use in uses
        if use[2] != "via-config"
        and (use[2] not in ("read", "write") or str(use[3]).startswith("CONCURRENCY_"))
        and (use[0], use[2], use[3]) != allowed_write
    ]
    assert wrong == []
    assert [(use[0], use[2], use[3]) for use in uses].count(allowed_write) == 1


def test_the_environ_scan_sees_the_known_uses():
    """Check the scanner: it finds a read, a write and a pass to Config, so the check is not vacuous."""
    uses = {(path, how, key) for path, _, how, key in environ_uses()}
    assert ("api/metrics.py", "read", "PROMETHEUS_MULTIPROC_DIR") in uses
    assert ("api/cli.py", "write", "PROMETHEUS_MULTIPROC_DIR") in uses
    assert ("api/cli.py", "write", "Config.env_name(name)") in uses
    assert ("api/app.py", "via-config", None) in uses


# -- parsing ----------------------------------------------------------------------------------------


def test_defaults_are_declared_once():
    assert Config.from_env({}) == Config()
    assert Config().max_streams == 3 and Config().session_ttl_s == 60


def test_unrelated_variables_are_ignored():
    assert Config.from_env({"MAX_STREAMS": "9", "concurrency_max_streams": "9"}) == Config()


def test_ints_floats_and_strings():
    config = Config.from_env(
        {
            "CONCURRENCY_MAX_STREAMS": "5",
            "CONCURRENCY_REDIS_TIMEOUT": "0.5",
            "CONCURRENCY_KEYS_RELOAD": "2",
            "CONCURRENCY_KEYS_PROPAGATION": "90",
            "CONCURRENCY_ISSUER": "https://concurrency.example",
            "CONCURRENCY_REDIS_URL": "rediss://cache:6380/1",
        }
    )
    assert (config.max_streams, type(config.max_streams)) == (5, int)
    assert (config.redis_timeout_s, type(config.redis_timeout_s)) == (0.5, float)
    assert (config.keys_reload_s, type(config.keys_reload_s)) == (2.0, float)
    assert (config.keys_propagation_s, type(config.keys_propagation_s)) == (90.0, float)
    assert config.issuer == "https://concurrency.example"
    assert config.redis_url == "rediss://cache:6380/1"


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("true", True),
        ("TRUE", True),
        (" yes ", True),
        ("1", True),
        ("on", True),
        ("false", False),
        ("False", False),
        ("0", False),
        ("no", False),
        ("off", False),
    ],
)
def test_bools(raw, value):
    assert Config.from_env({"CONCURRENCY_RESUME": raw}).resume is value
    assert Config.from_env({"CONCURRENCY_ACCESS_LOG": raw}).access_log is value


@pytest.mark.parametrize("raw", ["", "maybe", "2", "y", "enabled"])
def test_a_bad_bool_names_its_variable(raw):
    with pytest.raises(ConfigError, match="CONCURRENCY_RESUME=.* is not a valid bool"):
        Config.from_env({"CONCURRENCY_RESUME": raw})


def test_algorithms_are_a_tuple():
    config = Config.from_env({"CONCURRENCY_USER_ALGORITHMS": " ES256 ,EdDSA,, "})
    assert config.user_algorithms == ("ES256", "EdDSA")
    assert Config().user_algorithms == ("RS256", "ES256", "EdDSA")


def test_plan_maps_are_typed_dicts():
    config = Config.from_env(
        {
            "CONCURRENCY_PLAN_LIMITS": "basic=1, premium = 4",
            "CONCURRENCY_PLAN_AT_LIMIT": "premium=evict-oldest,basic=reject",
        }
    )
    assert config.plan_limits == {"basic": 1, "premium": 4}
    assert all(type(limit) is int for limit in config.plan_limits.values())
    assert config.plan_at_limit == {"premium": "evict-oldest", "basic": "reject"}
    assert Config.from_env({"CONCURRENCY_PLAN_LIMITS": ""}).plan_limits == {}
    assert Config().plan_limits == {} and Config().plan_at_limit == {}


def test_device_limit_settings():
    config = Config.from_env(
        {
            "CONCURRENCY_DEVICE_LIMIT": "2",
            "CONCURRENCY_DEVICE_LIMIT_CLAIM": "devices",
            "CONCURRENCY_PLAN_DEVICE_LIMITS": "basic=1, premium = 3",
        }
    )
    assert (config.device_limit, config.device_limit_claim) == (2, "devices")
    assert config.plan_device_limits == {"basic": 1, "premium": 3}
    assert all(type(limit) is int for limit in config.plan_device_limits.values())
    with pytest.raises(TypeError):
        config.plan_device_limits["basic"] = 9
    defaults = Config()
    assert (defaults.device_limit, defaults.device_limit_claim, defaults.plan_device_limits) == (
        0,
        "dlimit",
        {},
    )


def test_plan_maps_cannot_be_changed_in_place():
    config = Config.from_env({"CONCURRENCY_PLAN_LIMITS": "basic=1"})
    with pytest.raises(TypeError):
        config.plan_limits["basic"] = 9
    with pytest.raises(TypeError):
        Config().plan_at_limit["basic"] = "evict-oldest"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"CONCURRENCY_MAX_STREAMS": "many"}, "CONCURRENCY_MAX_STREAMS='many' is not a valid int"),
        ({"CONCURRENCY_MAX_STREAMS": "2.5"}, "CONCURRENCY_MAX_STREAMS='2.5' is not a valid int"),
        ({"CONCURRENCY_SESSION_TTL": ""}, "CONCURRENCY_SESSION_TTL='' is not a valid int"),
        ({"CONCURRENCY_REDIS_TIMEOUT": "fast"}, "CONCURRENCY_REDIS_TIMEOUT='fast' is not a valid float"),
        ({"CONCURRENCY_PLAN_LIMITS": "basic"}, "CONCURRENCY_PLAN_LIMITS must look like"),
        ({"CONCURRENCY_PLAN_LIMITS": "=1"}, "CONCURRENCY_PLAN_LIMITS must look like"),
        ({"CONCURRENCY_PLAN_LIMITS": "basic=1,"}, "CONCURRENCY_PLAN_LIMITS must look like"),
        ({"CONCURRENCY_PLAN_LIMITS": "basic=0"}, "CONCURRENCY_PLAN_LIMITS: 'basic' needs a positive"),
        ({"CONCURRENCY_PLAN_LIMITS": "basic=-1"}, "CONCURRENCY_PLAN_LIMITS: 'basic' needs a positive"),
        ({"CONCURRENCY_PLAN_LIMITS": "basic=1.5"}, "CONCURRENCY_PLAN_LIMITS: 'basic' needs a positive"),
        ({"CONCURRENCY_PLAN_AT_LIMIT": "basic"}, "CONCURRENCY_PLAN_AT_LIMIT must look like"),
        ({"CONCURRENCY_DEVICE_LIMIT": "two"}, "CONCURRENCY_DEVICE_LIMIT='two' is not a valid int"),
        ({"CONCURRENCY_PLAN_DEVICE_LIMITS": "tv"}, "CONCURRENCY_PLAN_DEVICE_LIMITS must look like"),
        (
            {"CONCURRENCY_PLAN_DEVICE_LIMITS": "basic=0"},
            "CONCURRENCY_PLAN_DEVICE_LIMITS: 'basic' needs a pos",
        ),
        ({"CONCURRENCY_PLAN_AT_LIMIT": "basic=shrug"}, "CONCURRENCY_PLAN_AT_LIMIT: 'basic' needs reject"),
    ],
)
def test_malformed_values_name_their_variable(environ, message):
    with pytest.raises(ConfigError, match=message):
        Config.from_env(environ)


def test_a_plan_limit_in_other_digits_names_its_variable():
    """Refuse a digit int() cannot read as ConfigError too: `'²'.isdigit()` is true, `int('²')` fails."""
    with pytest.raises(ConfigError, match="CONCURRENCY_PLAN_LIMITS"):
        Config.from_env({"CONCURRENCY_PLAN_LIMITS": "basic=²"})


def test_overrides_win_over_the_environment():
    environ = {"CONCURRENCY_MAX_STREAMS": "5", "CONCURRENCY_ISSUER": "from-env"}
    config = Config.from_env(environ, max_streams=2)
    assert (config.max_streams, config.issuer) == (2, "from-env")
    # an override is not parsed from the variable at all, so a malformed one does not matter
    assert Config.from_env({"CONCURRENCY_MAX_STREAMS": "many"}, max_streams=2).max_streams == 2


# -- validation -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"max_streams": 0}, "CONCURRENCY_MAX_STREAMS must be at least 1"),
        ({"session_ttl_s": -1}, "CONCURRENCY_SESSION_TTL must be at least 1"),
        ({"degraded_ttl_s": 0}, "CONCURRENCY_DEGRADED_TTL must be at least 1"),
        ({"max_body_bytes": 0}, "CONCURRENCY_MAX_BODY_BYTES must be at least 1"),
        ({"max_id_chars": 0}, "CONCURRENCY_MAX_ID_CHARS must be at least 1"),
        ({"stream_limit": -1}, "CONCURRENCY_STREAM_LIMIT must not be negative"),
        ({"device_limit": -1}, "CONCURRENCY_DEVICE_LIMIT must not be negative"),
        ({"token_leeway_s": -1}, "CONCURRENCY_TOKEN_LEEWAY must not be negative"),
        ({"retry_after_s": -1}, "CONCURRENCY_RETRY_AFTER must not be negative"),
        ({"redis_timeout_s": 0}, "CONCURRENCY_REDIS_TIMEOUT must be a positive number"),
        ({"redis_timeout_s": float("nan")}, "CONCURRENCY_REDIS_TIMEOUT must be a positive number"),
        ({"keys_reload_s": -0.5}, "CONCURRENCY_KEYS_RELOAD must be a positive number"),
        ({"keys_propagation_s": -1.0}, "CONCURRENCY_KEYS_PROPAGATION must be a number of seconds, 0 or more"),
        ({"keys_propagation_s": math.inf}, "CONCURRENCY_KEYS_PROPAGATION must be a number of seconds"),
        ({"keys_propagation_s": math.nan}, "CONCURRENCY_KEYS_PROPAGATION must be a number of seconds"),
        ({"redis_mode": "sentinel"}, "CONCURRENCY_REDIS_MODE must be one of standalone, cluster"),
        ({"at_limit": "evict"}, "CONCURRENCY_AT_LIMIT must be one of reject, evict-oldest"),
        ({"on_store_error": "ignore"}, "CONCURRENCY_ON_STORE_ERROR must be one of closed, open"),
        ({"log_level": "info"}, "CONCURRENCY_LOG_LEVEL must be one of"),
        ({"plan_limits": {"basic": 0}}, "CONCURRENCY_PLAN_LIMITS: 'basic' needs a positive integer"),
        ({"plan_limits": {"basic": True}}, "CONCURRENCY_PLAN_LIMITS: 'basic' needs a positive integer"),
        ({"plan_limits": {"basic": "1"}}, "CONCURRENCY_PLAN_LIMITS: 'basic' needs a positive integer"),
        ({"plan_at_limit": {"basic": "evict"}}, "CONCURRENCY_PLAN_AT_LIMIT: 'basic' needs reject"),
        ({"plan_device_limits": {"tv": 0}}, "CONCURRENCY_PLAN_DEVICE_LIMITS: 'tv' needs a positive integer"),
        (
            {"plan_device_limits": {"tv": "1"}},
            "CONCURRENCY_PLAN_DEVICE_LIMITS: 'tv' needs a positive integer",
        ),
        ({"user_jwks": "jwks.json"}, "CONCURRENCY_USER_ISSUER and CONCURRENCY_USER_AUDIENCE are required"),
        (
            {"user_jwks": "jwks.json", "user_issuer": "https://idp.example"},
            "CONCURRENCY_USER_ISSUER and CONCURRENCY_USER_AUDIENCE are required",
        ),
        (
            {"user_jwks": "https://idp.example/jwks", "user_audience": "concurrency"},
            "CONCURRENCY_USER_ISSUER and CONCURRENCY_USER_AUDIENCE are required",
        ),
        *(
            (
                {"user_jwks": url, "user_issuer": "i", "user_audience": "a"},
                r"CONCURRENCY_USER_JWKS must be https:// \(http:// on loopback only\)",
            )
            for url in (
                "http://idp.example/jwks",
                "HTTP://idp.example/jwks",
                "http://127.0.0.1.evil.example/jwks",
                "http://127.0.0.1@evil.example/jwks",
                "http://[::1].evil.example:8080/jwks",  # urlsplit's hostname says ::1; urllib asks DNS
                "http://evil.example[::1]/jwks",
                "http://[::1",
            )
        ),
    ],
)
def test_unsafe_or_broken_values_are_refused(values, message):
    with pytest.raises(ConfigError, match=message):
        Config(**values)


def test_the_smallest_valid_values_are_accepted():
    config = Config(
        max_streams=1,
        stream_limit=0,
        token_leeway_s=0,
        retry_after_s=0,
        keys_propagation_s=0.0,  # one instance reading its own directory
    )
    assert (config.max_streams, config.stream_limit, config.token_leeway_s) == (1, 0, 0)
    assert config.keys_propagation_s == 0
    jwks = Config(user_jwks="jwks.json", user_issuer="https://idp.example", user_audience="concurrency")
    assert jwks.user_jwks == "jwks.json"
    for url in (
        "https://idp.example/jwks",
        "http://127.0.0.1:8080/jwks",
        "http://[::1]/jwks",
        "http://localhost/j",
    ):
        assert Config(user_jwks=url, user_issuer="i", user_audience="a").user_jwks == url


def test_redis_tls_and_credentials_from_the_environment(tmp_path):
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("-----BEGIN CERTIFICATE-----\n")
    config = Config.from_env(
        {
            "CONCURRENCY_REDIS_URL": "rediss://a:6379,rediss://b:6379",
            "CONCURRENCY_REDIS_MODE": "cluster",
            "CONCURRENCY_REDIS_CA_FILE": str(ca_file),
            "CONCURRENCY_REDIS_USERNAME": "concurrency-service",
            "CONCURRENCY_REDIS_PASSWORD": "from-secrets-manager",
        }
    )
    assert config.redis_ca_file == str(ca_file)
    assert (config.redis_username, config.redis_password) == ("concurrency-service", "from-secrets-manager")
    assert config.redis_urls == ("rediss://a:6379", "rediss://b:6379")
    assert Config().redis_ca_file == Config().redis_username == Config().redis_password == ""


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"redis_url": "redis://cache:6379/0"}, "CONCURRENCY_REDIS_CA_FILE needs TLS"),
        (
            {"redis_mode": "cluster", "redis_url": "rediss://a:6379,redis://b:6379"},
            "CONCURRENCY_REDIS_CA_FILE needs TLS",
        ),
        ({"redis_url": "rediss://cache:6379/0", "redis_ca_file": "missing.pem"}, "is not a readable file"),
        ({"redis_url": "rediss://cache:6379/0", "redis_ca_file": "."}, "is not a readable file"),
        ({"redis_url": " ", "redis_ca_file": ""}, "CONCURRENCY_REDIS_URL is empty"),
        ({"redis_mode": "cluster", "redis_url": ", ", "redis_ca_file": ""}, "CONCURRENCY_REDIS_URL is empty"),
    ],
)
def test_redis_tls_settings_that_cannot_work_are_refused_at_boot(tmp_path, values, message):
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("-----BEGIN CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match=message):
        Config(**{"redis_ca_file": str(ca_file), **values})


def test_an_infinite_redis_timeout_is_refused():
    """`inf` passes `> 0`, then RedisStore's int(timeout_s * 1000) raises OverflowError at boot."""
    with pytest.raises(ConfigError, match="CONCURRENCY_REDIS_TIMEOUT"):
        Config.from_env({"CONCURRENCY_REDIS_TIMEOUT": "inf"})


def test_validation_applies_to_values_from_the_environment():
    with pytest.raises(ConfigError, match="CONCURRENCY_MAX_STREAMS must be at least 1"):
        Config.from_env({"CONCURRENCY_MAX_STREAMS": "0"})


@pytest.mark.parametrize(
    "env, message",
    [
        ({"CONCURRENCY_AUTH": "user-token"}, "needs CONCURRENCY_USER_JWKS"),
        ({"CONCURRENCY_AUTH": "trusted-caller"}, "needs CONCURRENCY_CALLERS"),
        (
            {"CONCURRENCY_AUTH": "anonymous,trusted-caller", "CONCURRENCY_CALLERS": "a:" + "s" * 16},
            "combined",
        ),
        ({"CONCURRENCY_AUTH": "everyone"}, "must name some of"),
        ({"CONCURRENCY_CALLERS": "playback-api"}, "must look like"),
        ({"CONCURRENCY_CALLERS": "playback-api:short"}, "at least 16 characters"),
        ({"CONCURRENCY_CALLERS": "bad name:" + "s" * 16}, "caller name"),
        ({"CONCURRENCY_MAX_ID_CHARS": "257"}, "between 1 and 256"),
        ({"CONCURRENCY_MAX_BODY_BYTES": "4096"}, "the longest valid request"),
    ],
)
def test_caller_modes_and_limits_are_checked(env, message):
    with pytest.raises(ConfigError, match=message):
        Config.from_env(env)


def test_caller_modes_follow_what_is_configured():
    secret = "s" * 16
    assert Config().caller_modes == ("anonymous",)
    assert Config(callers=(("api", secret),)).caller_modes == ("trusted-caller",)
    both = Config(callers=(("api", secret),), user_jwks="f", user_issuer="i", user_audience="a")
    assert both.caller_modes == ("user-token", "trusted-caller")
    assert Config(auth=("trusted-caller",), callers=(("api", secret),)).caller_modes == ("trusted-caller",)


def test_secrets_stay_out_of_the_config_repr():
    secret = "do-not-log-" + "s" * 16
    config = Config(
        admin_token=secret, callers=(("api", secret),), signing_key_pem=secret, redis_password=secret
    )
    assert secret not in repr(config)


# -- derived values ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("on_store_error", "session_ttl_s", "degraded_ttl_s", "longest"),
    [
        ("closed", 60, 90, 60),  # no degraded token is ever signed
        ("closed", 60, 30, 60),
        ("open", 60, 90, 150),  # a degraded chain may run 90 s past the last confirmed expiry
        ("open", 60, 30, 90),
    ],
)
def test_longest_token(on_store_error, session_ttl_s, degraded_ttl_s, longest):
    config = Config(on_store_error=on_store_error, session_ttl_s=session_ttl_s, degraded_ttl_s=degraded_ttl_s)
    assert config.longest_token_s == longest


@pytest.mark.parametrize("value", ["none", "HS256", "RS256,hs256", ""])
def test_user_algorithms_are_asymmetric_ones_only(value):
    with pytest.raises(ConfigError, match="CONCURRENCY_USER_ALGORITHMS"):
        Config.from_env({"CONCURRENCY_USER_ALGORITHMS": value})


def test_an_infinite_key_reload_interval_is_refused():
    with pytest.raises(ConfigError, match="CONCURRENCY_KEYS_RELOAD"):
        Config.from_env({"CONCURRENCY_KEYS_RELOAD": "inf"})
