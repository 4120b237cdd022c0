# Shared by scripts/run and scripts/test: install what is missing, idempotently.

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
    if [ -z "${APT_UPDATED:-}" ]; then
        as_root apt-get update -qq
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

# A virtualenv in .venv with the package and its test extras at the versions of constraints.txt,
# reinstalled when setup.cfg or the constraints change.
ensure_venv() {
    if [ ! -x .venv/bin/python ]; then
        python3 -m venv .venv 2>/dev/null || { apt_install python3-venv && python3 -m venv .venv; }
    fi
    local stamp=".venv/.installed-$(cat setup.cfg pyproject.toml constraints.txt | sha256sum | cut -c1-16)"
    if [ ! -e "$stamp" ]; then
        .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
        rm -f .venv/.installed-*
        touch "$stamp"
    fi
}

ensure_redis_server() {
    command -v redis-server >/dev/null || apt_install redis-server
}
