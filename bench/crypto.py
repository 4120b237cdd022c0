"""The crypto floor: heartbeats/s of a core that did nothing but verify one ES256 token and sign one.

Run as `python -m bench.crypto` (under taskset, on the server's core) so the figure belongs to
that core in that run; it prints one JSON object.
"""

import argparse
import json
import subprocess
import sys
import time

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from .processes import BenchError, pinned

# A session token's signing input (header.claims) has about this size; the hash of it is noise.
SIGNING_INPUT = b"e" * 330
REPEATS = 5


def _seconds_per_call(call, iterations):
    """Return the best, over REPEATS batches, of the mean time of one call: what the core can do."""
    batch = max(1, iterations // REPEATS)
    best = float("inf")
    for _ in range(REPEATS):
        started = time.perf_counter()
        for _ in range(batch):
            call()
        best = min(best, (time.perf_counter() - started) / batch)
    return best


def measure(iterations):
    """Time ES256 sign and verify with `cryptography` directly; return µs each and the floor in ops/s."""
    private_key = ec.generate_private_key(ec.SECP256R1())
    public_key = private_key.public_key()
    algorithm = ec.ECDSA(hashes.SHA256())
    signature = private_key.sign(SIGNING_INPUT, algorithm)
    sign_s = _seconds_per_call(lambda: private_key.sign(SIGNING_INPUT, algorithm), iterations)
    verify_s = _seconds_per_call(lambda: public_key.verify(signature, SIGNING_INPUT, algorithm), iterations)
    return {
        "verify_us": verify_s * 1e6,
        "sign_us": sign_s * 1e6,
        "floor_per_s": 1 / (verify_s + sign_s),
        "iterations": iterations,
    }


def measure_on(cpus, iterations):
    """Run `measure` in a child process pinned to `cpus`; return its figures."""
    command = pinned([sys.executable, "-m", "bench.crypto", "--iterations", str(iterations)], cpus)
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise BenchError(f"measuring the crypto floor failed:\n{done.stderr}")
    return {**json.loads(done.stdout), "cpus": sorted(cpus)}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.crypto", description=__doc__)
    parser.add_argument("--iterations", type=int, default=20000, help="signatures and verifications each")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.iterations)))


if __name__ == "__main__":
    main()
