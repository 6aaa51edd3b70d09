"""Auth figures (issue #4): SDK token verification, token issuance and login latency.

- ``auth.verify_first_seen``: RS256 access tokens verified per second by the SDK's
  ``TokenVerifier`` (keys preloaded with ``load_jwks``, every token seen for the first time),
  against the faster of PyJWT (``jwt.decode`` with a pre-built key object) and joserfc
  (``jwt.decode`` + ``JWTClaimsRegistry.validate``) on the same tokens; raw ``cryptography``
  PKCS#1 v1.5 verification of the same signatures (the floor every library pays) is in
  ``extra``. The tokens carry Keel's claims and are signed with a 2048-bit RSA key, as Keel's.
- ``auth.verify_cached``: the same tokens verified again (the verified-token cache) against
  PyJWT, which verifies every time.
- ``auth.client_credentials_per_s``: ``POST /auth/v1/oauth/token`` (client_credentials,
  Basic client auth) answered per second by a real ``keel serve`` on the embedded SQLite and
  on PostgreSQL (a fresh database, dropped afterwards), with one worker and with two, driven
  by a closed-loop HTTP/1.1 load generator in a separate process. No peer.
- ``auth.client_credentials_vs_raw_signing``: issue 23's figure: the best of those servers
  against the raw signing rate of the same algorithm — ``cryptography`` signing a token-sized
  signing input in a loop on one core of this process, measured in every round (RS256: PKCS#1
  v1.5 with a 2048-bit key, as Keel's). The same for ``ES256`` and ``EdDSA`` signing keys
  (``KEEL_AUTH__SIGNING_ALGORITHM``, the embedded SQLite, one worker) in
  ``auth.client_credentials_es256_vs_raw_signing`` and ``..._eddsa_...``. Target: ratio 0.5.
- ``auth.login_p50_ms``: median latency of sequential ``POST /auth/v1/login`` (argon2id-bound).

Peers run in the same process and rounds alternate; every figure is a median of rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks._databases import postgres_database
from benchmarks._figures import Figure, emit
from benchmarks._servers import (
    HOST,
    LOAD_GENERATOR,
    REPO_ROOT,
    Server,
    ServerFailed,
    clean_env,
    drive,
    free_port,
    keel_admin_key,
    keel_serve_command,
    run_keel_command,
)

#: Verification runs over SLICES slices of SLICE distinct tokens each.
SLICES = 24
SLICE = 250
LOAD_ROUNDS = 3
LOAD_SECONDS = 4.0
WARMUP_SECONDS = 1.0
CONCURRENCY = 16
LOGINS = 50
ISSUER = "https://keel.bench"
AUDIENCE = "keel"
BENCH_MASTER_KEY = base64.b64encode(b"keel-bench-master-key-32-bytes!!").decode()
PASSWORD = "plum-Tractor-kettle-47"  # noqa: S105 - a benchmark user's password

TARGET_VERIFY_RATIO = 1.0
TARGET_CACHED_RATIO = 10.0
TARGET_TOKENS_PER_S = 500.0
TARGET_RAW_SIGNING_RATIO = 0.5
#: CPU seconds each raw-signing measurement signs for.
RAW_SIGNING_SECONDS = 1.0


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def _ratio(value: float, peer: float) -> float | None:
    return round(value / peer, 3) if peer else None


# ---------------------------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------------------------


def _issue_tokens(count: int) -> tuple[list[str], dict[str, Any], Any]:
    """``count`` distinct RS256 access tokens with Keel's claims, the JWKS and the public key."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_key = private_key.public_key()
    jwk = RSAAlgorithm.to_jwk(public_key, as_dict=True)
    jwk.update(kid="bench-key", alg="RS256", use="sig")
    now = int(time.time())

    def claims() -> dict[str, Any]:
        return {
            "iss": ISSUER, "sub": str(uuid.uuid4()), "aud": AUDIENCE,
            "iat": now, "nbf": now, "exp": now + 900, "jti": uuid.uuid4().hex,
            "tid": str(uuid.uuid4()), "typ": "service_account", "roles": ["reader"],
            "permissions": ["orders:order:read", "orders:order:list"], "scope": "",
        }  # fmt: skip

    headers = {"kid": "bench-key", "typ": "at+jwt"}
    tokens = [
        jwt.encode(claims(), private_key, algorithm="RS256", headers=headers) for _ in range(count)
    ]
    return tokens, {"keys": [jwk]}, public_key


def _rate(run: Callable[[list[str]], None], tokens: list[str]) -> float:
    # CPU time of this process: single-threaded CPU-bound work, so other load on a shared
    # machine (time the process spends descheduled) does not count against whoever runs then.
    started = time.process_time()
    run(tokens)
    return len(tokens) / (time.process_time() - started)


def _raw_signing_per_s(algorithm: str) -> float:
    """Signatures a second of ``algorithm`` by ``cryptography`` alone over a token-sized
    signing input, on one core (CPU time of this process)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

    signing_input = os.urandom(450).hex().encode()[:600]  # a header and Keel's claims
    sign: Callable[[], object]
    if algorithm == "RS256":
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pkcs1, sha256 = padding.PKCS1v15(), hashes.SHA256()
        sign = lambda: rsa_key.sign(signing_input, pkcs1, sha256)  # noqa: E731
    elif algorithm == "ES256":
        ec_key = ec.generate_private_key(ec.SECP256R1())
        ecdsa = ec.ECDSA(hashes.SHA256())
        sign = lambda: ec_key.sign(signing_input, ecdsa)  # noqa: E731
    else:
        ed_key = ed25519.Ed25519PrivateKey.generate()
        sign = lambda: ed_key.sign(signing_input)  # noqa: E731
    signed = 0
    started = time.process_time()
    while (elapsed := time.process_time() - started) < RAW_SIGNING_SECONDS:
        for _ in range(50):
            sign()
        signed += 50
    return signed / elapsed


def verification() -> list[Figure]:
    import jwt
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    from joserfc import jwt as jose_jwt
    from joserfc.jwk import RSAKey

    from keel_client.auth import TokenVerifier

    tokens, jwks, public_key = _issue_tokens(SLICES * SLICE)
    jose_key = RSAKey.import_key(jwks["keys"][0])
    jose_claims = jose_jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": ISSUER},
        aud={"essential": True, "value": AUDIENCE},
        sub={"essential": True},
    )
    signatures: dict[str, tuple[bytes, bytes]] = {}
    for token in tokens:
        signing_input, _, signature = token.rpartition(".")
        padded = signature + "=" * (-len(signature) % 4)
        signatures[token] = (signing_input.encode(), base64.urlsafe_b64decode(padded))

    async def no_fetch() -> dict[str, Any]:
        return jwks

    runner = asyncio.Runner()
    verifier = TokenVerifier(no_fetch, issuer=ISSUER, audience=AUDIENCE)

    async def verify_all(batch: list[str]) -> None:
        for token in batch:
            await verifier.verify(token)

    def ours_first_seen(batch: list[str]) -> None:
        runner.run(verify_all(batch))

    def pyjwt(batch: list[str]) -> None:
        for token in batch:
            jwt.decode(token, public_key, algorithms=["RS256"], audience=AUDIENCE, issuer=ISSUER)

    def joserfc(batch: list[str]) -> None:
        for token in batch:
            decoded = jose_jwt.decode(token, jose_key, algorithms=["RS256"])
            jose_claims.validate(decoded.claims)

    pkcs1, sha256 = padding.PKCS1v15(), hashes.SHA256()

    def raw_cryptography(batch: list[str]) -> None:
        for token in batch:
            signing_input, signature = signatures[token]
            public_key.verify(signature, signing_input, pkcs1, sha256)

    measures: list[tuple[str, Callable[[list[str]], None]]] = [
        ("ours", ours_first_seen), ("pyjwt", pyjwt), ("joserfc", joserfc),
        ("cryptography", raw_cryptography),
    ]  # fmt: skip
    rates: dict[str, list[float]] = {name: [] for name, _ in measures}
    rates["ours_cached"] = []
    try:
        # Unmeasured: warm every code path (and fill the verifier's cache, then empty it).
        for _, run in measures:
            run(tokens[:SLICE])
        # Short slices in a rotating order: a burst of load on the machine hits every
        # implementation alike, and each figure is the median over slices.
        for index in range(SLICES):
            batch = tokens[index * SLICE : (index + 1) * SLICE]
            verifier.load_jwks({"keys": []})  # empties the verified-token cache
            verifier.load_jwks(jwks)
            shift = index % len(measures)
            for name, run in measures[shift:] + measures[:shift]:
                rates[name].append(_rate(run, batch))
            rates["ours_cached"].append(_rate(ours_first_seen, batch))
    finally:
        runner.close()
    median = {name: _median(values) for name, values in rates.items()}
    peer = max(("pyjwt", "joserfc"), key=lambda name: median[name])
    first = median["ours"]
    first_ratio = _ratio(first, median[peer])
    cached = median["ours_cached"]
    cached_ratio = _ratio(cached, median["pyjwt"])
    common = {
        "slices": SLICES,
        "tokens_per_slice": SLICE,
        "clock": "process CPU time",
        "key": "RSA 2048, RS256, keys preloaded (load_jwks)",
    }
    return [
        emit(
            Figure(
                "auth.verify_first_seen", round(first), "verifications/s", peer, first_ratio,
                {
                    **common,
                    "runs": [round(rate) for rate in rates["ours"]],
                    "pyjwt_per_s": round(median["pyjwt"]),
                    "joserfc_per_s": round(median["joserfc"]),
                    "cryptography_per_s": round(median["cryptography"]),
                    "ratio_vs_cryptography": _ratio(first, median["cryptography"]),
                    "us_per_verification": round(1e6 / first, 1),
                    "target_ratio": TARGET_VERIFY_RATIO,
                    "met": first_ratio is not None and first_ratio >= TARGET_VERIFY_RATIO,
                },
            )
        ),
        emit(
            Figure(
                "auth.verify_cached", round(cached), "verifications/s", "pyjwt", cached_ratio,
                {
                    **common,
                    "runs": [round(rate) for rate in rates["ours_cached"]],
                    "pyjwt_per_s": round(median["pyjwt"]),
                    "us_per_verification": round(1e6 / cached, 2),
                    "target_ratio": TARGET_CACHED_RATIO,
                    "met": cached_ratio is not None and cached_ratio >= TARGET_CACHED_RATIO,
                },
            )
        ),
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# A real Keel: set-up, token issuance under load, login latency
# ---------------------------------------------------------------------------------------------


def _api(port: int, method: str, path: str, admin_key: str, body: dict[str, Any]) -> Any:
    import httpx

    response = httpx.request(
        method, f"http://{HOST}:{port}{path}", json=body, timeout=30.0,
        headers={"Authorization": f"Bearer {admin_key}"},
    )  # fmt: skip
    if response.status_code >= 300:
        raise ServerFailed(f"{method} {path} answered {response.status_code}: {response.text}")
    return response.json()


@contextlib.contextmanager
def _running_keel(cwd: Path, env: dict[str, str]) -> Iterator[tuple[Server, str]]:
    """``keel init`` then ``keel serve``: the server and the admin API key."""
    cwd.mkdir(parents=True, exist_ok=True)
    admin_key = keel_admin_key(cwd, env, migrate=False)
    with _serving(cwd, env) as server:
        yield server, admin_key


@contextlib.contextmanager
def _serving(cwd: Path, env: dict[str, str], *options: str) -> Iterator[Server]:
    port = free_port()
    with Server(keel_serve_command(port, *options), port=port, cwd=cwd, env=env) as server:
        server.wait_http("/health/ready")
        yield server


def _basic_header(port: int, admin_key: str) -> str:
    account = _api(
        port, "POST", "/auth/v1/service-accounts", admin_key,
        {"name": f"bench-{uuid.uuid4().hex[:8]}", "roles": ["admin"]},
    )  # fmt: skip
    pair = f"{account['client_id']}:{account['client_secret']}".encode()
    return "Basic " + base64.b64encode(pair).decode()


def _token_load(port: int, basic: str) -> dict[str, Any]:
    """One load run against the token endpoint, from a child process."""
    command = [
        sys.executable, "-m", "benchmarks.bench_auth", "load", "--port", str(port),
        "--duration", str(LOAD_SECONDS), "--warmup", str(WARMUP_SECONDS),
        "--concurrency", str(CONCURRENCY),
    ]  # fmt: skip
    # The client secret travels in the environment, not on a command line others can read.
    env = {**os.environ, "KEEL_BENCH_BASIC_AUTH": basic}
    completed = subprocess.run(
        command, capture_output=True, timeout=LOAD_SECONDS + WARMUP_SECONDS + 60, check=False,
        cwd=REPO_ROOT, env=env,
    )  # fmt: skip
    if completed.returncode != 0:
        raise ServerFailed(f"load generator failed: {completed.stderr.decode(errors='replace')}")
    result: dict[str, Any] = json.loads(completed.stdout.decode().strip().splitlines()[-1])
    if not result["requests"]:
        raise ServerFailed("the token endpoint answered no request with 2xx")
    return result


def _login_latencies(port: int, admin_key: str) -> list[float]:
    import httpx

    username = f"bench-{uuid.uuid4().hex[:8]}"
    _api(port, "POST", "/auth/v1/users", admin_key, {"username": username, "password": PASSWORD})
    body = {"tenant": "default", "username": username, "password": PASSWORD}
    latencies = []
    with httpx.Client(base_url=f"http://{HOST}:{port}", timeout=30.0) as http:
        for attempt in range(LOGINS + 3):
            started = time.perf_counter()
            response = http.post("/auth/v1/login", json=body)
            elapsed = time.perf_counter() - started
            if response.status_code != 200:
                raise ServerFailed(f"login answered {response.status_code}: {response.text}")
            if attempt >= 3:  # the first few warm the connection and the code paths
                latencies.append(elapsed * 1000)
    return latencies


def _argon2_verify_ms() -> float:
    """One argon2id verification with Keel's default cost, in this process (the floor)."""
    from argon2 import PasswordHasher

    hasher = PasswordHasher(memory_cost=19_456, time_cost=2, parallelism=1)
    hashed = hasher.hash(PASSWORD)
    runs = []
    for _ in range(10):
        started = time.perf_counter()
        hasher.verify(hashed, PASSWORD)
        runs.append((time.perf_counter() - started) * 1000)
    return round(_median(runs), 2)


def issuance_and_login(root: Path) -> list[Figure]:
    env_common = {
        "KEEL_MASTER_KEY": BENCH_MASTER_KEY,
        "KEEL_AUTH__LOGIN_RATE_PER_IP_PER_MINUTE": "100000",
    }
    sqlite_env = clean_env(**env_common)
    es256_env = clean_env(KEEL_AUTH__SIGNING_ALGORITHM="ES256", **env_common)
    eddsa_env = clean_env(KEEL_AUTH__SIGNING_ALGORITHM="EdDSA", **env_common)
    databases = contextlib.ExitStack()
    database_url = databases.enter_context(postgres_database("keel_bench_auth"))
    postgres_env = clean_env(KEEL_DATABASE_URL=database_url, **env_common)
    figures = []
    try:
        run_keel_command("migrate", cwd=root, env=postgres_env)
        with (
            _running_keel(root / "sqlite", sqlite_env) as (sqlite, sqlite_admin),
            _serving(root / "sqlite", sqlite_env, "--workers", "2") as sqlite_2,
            _running_keel(root / "postgres", postgres_env) as (postgres, postgres_admin),
            _serving(root / "postgres", postgres_env, "--workers", "2") as postgres_2,
            _running_keel(root / "es256", es256_env) as (es256, es256_admin),
            _running_keel(root / "eddsa", eddsa_env) as (eddsa, eddsa_admin),
        ):
            basic = _basic_header(postgres.port, postgres_admin)
            sqlite_basic = _basic_header(sqlite.port, sqlite_admin)
            servers = {
                "sqlite": (sqlite, sqlite_basic),
                "sqlite, 2 workers": (sqlite_2, sqlite_basic),
                "postgresql": (postgres, basic),
                "postgresql, 2 workers": (postgres_2, basic),
                "sqlite, ES256": (es256, _basic_header(es256.port, es256_admin)),
                "sqlite, EdDSA": (eddsa, _basic_header(eddsa.port, eddsa_admin)),
            }
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
            raw: dict[str, list[float]] = {name: [] for name in ("RS256", "ES256", "EdDSA")}
            for round_ in range(LOAD_ROUNDS):
                for algorithm, rates in raw.items():
                    rates.append(_raw_signing_per_s(algorithm))
                names = list(servers)
                for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                    server, basic = servers[name]
                    cpu_before = server.cpu_seconds()
                    result = _token_load(server.port, basic)
                    # Warm-up included: CPU per answered request, whatever its status.
                    answered = max(1, result["total"])
                    result["cpu_ms"] = (server.cpu_seconds() - cpu_before) / answered * 1000
                    runs[name].append(result)
            for name, results in runs.items():
                value = _median([r["rps"] for r in results])
                figures.append(
                    emit(
                        Figure(
                            "auth.client_credentials_per_s", round(value, 1), "tokens/s", None,
                            None,
                            {
                                "database": name,
                                "runs": [r["rps"] for r in results],
                                "p50_ms": _median([r["p50_ms"] for r in results]),
                                "p99_ms": _median([r["p99_ms"] for r in results]),
                                "errors": sum(r["errors"] for r in results),
                                "server_cpu_ms_per_token": round(
                                    _median([r["cpu_ms"] for r in results]), 2
                                ),
                                "load_generator": f"{LOAD_GENERATOR}, {results[0]['loop']} loop",
                                "concurrency": CONCURRENCY,
                                "duration_s": LOAD_SECONDS,
                                "warmup_s": WARMUP_SECONDS,
                                "rounds": LOAD_ROUNDS,
                                "server": f"keel serve, {2 if '2 workers' in name else 1} "
                                "worker(s), log level info (as shipped)",
                                "target_per_s": TARGET_TOKENS_PER_S,
                                "met": value >= TARGET_TOKENS_PER_S,
                            },
                        )
                    )
                )  # fmt: skip
            figures.extend(_against_raw_signing(runs, raw))
            latencies = _login_latencies(sqlite.port, sqlite_admin)
            p50 = _median(latencies)
            figures.append(
                emit(
                    Figure(
                        "auth.login_p50_ms", round(p50, 2), "ms", None, None,
                        {
                            "database": "sqlite",
                            "logins": len(latencies),
                            "p90_ms": round(sorted(latencies)[int(len(latencies) * 0.9)], 2),
                            "argon2id_verify_ms": _argon2_verify_ms(),
                            "argon2id": "m=19456 KiB, t=2, p=1 (Keel's default)",
                        },
                    )
                )
            )  # fmt: skip
    finally:
        databases.close()
    return figures


def _against_raw_signing(
    runs: dict[str, list[dict[str, Any]]], raw: dict[str, list[float]]
) -> list[Figure]:
    """Tokens a second against the raw signing rate of their algorithm (issue 23)."""
    rates = {name: _median([r["rps"] for r in results]) for name, results in runs.items()}
    rs256 = {
        name: rate for name, rate in rates.items() if "ES256" not in name and "EdDSA" not in name
    }
    best = max(rs256, key=rs256.__getitem__)
    figures = []
    for figure, algorithm, name in (
        ("auth.client_credentials_vs_raw_signing", "RS256", best),
        ("auth.client_credentials_es256_vs_raw_signing", "ES256", "sqlite, ES256"),
        ("auth.client_credentials_eddsa_vs_raw_signing", "EdDSA", "sqlite, EdDSA"),
    ):
        peer = _median(raw[algorithm])
        figures.append(emit(Figure(
            figure, round(rates[name], 1), "tokens/s",
            f"raw {algorithm} signing (cryptography, one core)", _ratio(rates[name], peer),
            {"server": name, "peer_value": round(peer, 1),
             "raw_signing_rounds": [round(rate, 1) for rate in raw[algorithm]],
             "target_ratio": TARGET_RAW_SIGNING_RATIO,
             "met": rates[name] / peer >= TARGET_RAW_SIGNING_RATIO,
             **({"rs256_servers": {n: round(r, 1) for n, r in rs256.items()}}
                if algorithm == "RS256" else {})},
        )))  # fmt: skip
    return figures


def main() -> list[Figure]:
    figures = verification()
    root = Path(tempfile.mkdtemp(prefix="keel-bench-auth-"))
    try:
        figures.extend(issuance_and_login(root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return figures


# ---------------------------------------------------------------------------------------------
# Load generator for the token endpoint (runs in its own process)
# ---------------------------------------------------------------------------------------------


async def _load(args: argparse.Namespace) -> dict[str, Any]:
    body = b"grant_type=client_credentials"
    request = (
        f"POST /auth/v1/oauth/token HTTP/1.1\r\nHost: {HOST}:{args.port}\r\n"
        f"Authorization: {os.environ['KEEL_BENCH_BASIC_AUTH']}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\nUser-Agent: keel-bench\r\n\r\n"
    ).encode() + body
    return await drive(
        request,
        host=HOST,
        port=args.port,
        concurrency=args.concurrency,
        warmup=args.warmup,
        duration=args.duration,
        drain_timeout=10.0,
    )


def _load_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_auth.py load")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--duration", type=float, default=LOAD_SECONDS)
    parser.add_argument("--warmup", type=float, default=WARMUP_SECONDS)
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(_load(args))
    else:
        result = uvloop.run(_load(args))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["load"]:
        sys.exit(_load_main(sys.argv[2:]))
    main()
