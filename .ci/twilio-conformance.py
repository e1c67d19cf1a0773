#!/usr/bin/env python3
"""Conformance vectors for callgate's X-Twilio-Signature check, made by Twilio's own Python library.

Usage:
    pip install 'twilio>=9.13'
    python3 .ci/twilio-conformance.py OUT.json [--n 200] [--seed S]
    CALLGATE_TWILIO_VECTORS=OUT.json cargo test --test twilio_conformance

For each of the two signing modes (auth token with HMAC-SHA1, and SharedKey with HMAC-SHA256 as
named by X-Twilio-Webhooks-Signature-Settings), N random requests are signed by
twilio.request_validator.RequestValidator: form POSTs, GETs and JSON bodies, to random https (and
some http) URLs with and without ports and query strings, with random parameters (any Unicode,
repeated names, empty values). The signed URL is the URL as requested or its port variant (port
removed, default port added). Each genuine request also yields:
  - a re-encoding of its form body (same decoded parameters, other escapes), which must validate;
  - tampers, which must not: a changed decoded name, a changed decoded value, a changed URL path
    or query, a changed JSON body.
Every expectation is first confirmed with RequestValidator.validate itself, so the file records
what Twilio's library decides. Only the standard library and twilio are used.
"""

import argparse
import hashlib
import json
import random
import sys
import urllib.parse

try:
    import twilio
    from twilio.request_validator import RequestValidator, get_signature_algorithm
except ImportError as e:  # twilio missing, or older than the SharedKey support
    sys.exit(f"twilio-conformance: needs twilio>=9.13 (pip install 'twilio>=9.13'): {e}")

TWILIO_NAMES = [
    "AccountSid", "ApiVersion", "CallSid", "CallStatus", "Called", "Caller", "Direction", "From",
    "FromCity", "FromCountry", "To", "ToState", "Digits", "Reason", "ReasonConferenceEnded",
    "SpeechResult", "MessagingBinding.Address", "a", "A", "aa", "Z", "",
]
ALPHABETS = [
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
    " +&=%#?/:;@!$'()*,.-_~\"<>[]\\^`{|}",
    "\t\n\r\x00\x7f",
    "éüßñøÅÆçàÿ",
    "中文日本語한국어",
    "🎉😀𝄞🇬🇧",
    "\u0301\u200b\ufeff\ufffd",
]


class Form(dict):
    """name -> [values], read by RequestValidator through getall (as with a MultiDict)."""

    def getall(self, name):
        return self[name]


def text(rng, max_len):
    n = rng.choice([0, 1, 2, rng.randint(0, max_len)])
    weights = [8, 3, 1, 2, 1, 1, 1]
    return "".join(rng.choice(rng.choices(ALPHABETS, weights)[0]) for _ in range(n))


def random_params(rng):
    pairs = []
    for _ in range(rng.randint(0, 12)):
        name = rng.choice(TWILIO_NAMES) if rng.random() < 0.6 else text(rng, 12)
        pairs.append((name, text(rng, 24)))
    if pairs and rng.random() < 0.5:  # the same name again, with a new or the same value
        name, value = rng.choice(pairs)
        pairs.append((name, value if rng.random() < 0.3 else text(rng, 10)))
    rng.shuffle(pairs)
    return pairs


def form_of(pairs):
    form = Form()
    for name, value in pairs:
        form.setdefault(name, []).append(value)
    return form


def encode_component(rng, s, form=True):
    """Percent-encodes s as a browser or Twilio might, choosing escapes at random."""
    out = []
    for byte in s.encode("utf-8"):
        c = chr(byte)
        if form and c == " " and rng.random() < 0.7:
            out.append("+")
        elif (c.isascii() and (c.isalnum() or c in "-._~*")) and rng.random() < 0.85:
            out.append(c)
        else:
            out.append(("%%%02X" if rng.random() < 0.7 else "%%%02x") % byte)
    return "".join(out)


def encode_form(rng, pairs):
    return "&".join(encode_component(rng, n) + "=" + encode_component(rng, v) for n, v in pairs)


def random_url(rng):
    scheme = "https" if rng.random() < 0.9 else "http"
    host = rng.choice(["example.com", "callgate.example.org", "voice.example.net", "127.0.0.1", "[::1]"])
    port = rng.choice([None, None, 443, 80, 8443, 1234])
    segments = [encode_component(rng, text(rng, 8), form=False) for _ in range(rng.randint(0, 3))]
    path = "/" + "/".join(segments)
    query = ""
    if rng.random() < 0.6:
        query = "?" + encode_form(rng, [(text(rng, 6) or "q", text(rng, 10)) for _ in range(rng.randint(1, 4))])
    return scheme, host, port, path, query


def assemble(scheme, host, port, path, query):
    return f"{scheme}://{host}{'' if port is None else f':{port}'}{path}{query}"


def signed_variant(rng, scheme, host, port, path, query):
    """The URL Twilio signed: as requested, or its port variant."""
    if rng.random() < 0.5:
        return assemble(scheme, host, port, path, query)
    if port is not None:
        return assemble(scheme, host, None, path, query)
    return assemble(scheme, host, 443 if scheme == "https" else 80, path, query)


def mutate(rng, s):
    """A different string: a character changed, added or removed."""
    choice = rng.random()
    if s and choice < 0.4:
        i = rng.randrange(len(s))
        replacement = rng.choice([c for c in "xyzX9é🎉 " if c != s[i]])
        return s[:i] + replacement + s[i + 1:]
    if s and choice < 0.6:
        i = rng.randrange(len(s))
        return s[:i] + s[i + 1:]
    i = rng.randint(0, len(s))
    return s[:i] + rng.choice("xyz9é🎉") + s[i:]


class Generator:
    def __init__(self, rng):
        self.rng = rng
        self.cases = []
        self.retries = 0

    def secrets(self, mode):
        rng = self.rng
        secret = rng.choice(["", "é"]) + "".join(rng.choice("0123456789abcdef") for _ in range(32))
        decoy = "".join(rng.choice("0123456789abcdef") for _ in range(32))
        if mode == "token":
            tokens = [decoy, secret] if rng.random() < 0.5 else [secret, decoy]
            return secret, None, {"auth_tokens": tokens, "shared_keys": []}
        key_id = "webhooks_sharedkey_" + "".join(rng.choice("0123456789ABCDEF") for _ in range(16))
        algorithm = rng.choice(["HMAC_SHA256", "HMAC_SHA256", "hmac_sha256"])
        settings = rng.choice([f"key={key_id},algorithm={algorithm}", f"algorithm={algorithm}, key={key_id}"])
        shared = [[key_id, secret], ["webhooks_sharedkey_OTHER", decoy]]
        rng.shuffle(shared)
        return secret, settings, {"auth_tokens": [decoy], "shared_keys": shared}

    def add(self, **case):
        case["id"] = len(self.cases)
        self.cases.append(case)

    def one(self, mode):
        rng = self.rng
        secret, settings, keys = self.secrets(mode)
        validator = RequestValidator(secret)
        algorithm = get_signature_algorithm(settings)
        scheme, host, port, path, query = random_url(rng)
        kind = rng.choices(["form", "get", "json"], [7, 2, 1])[0]
        pairs, body = [], ""
        if kind == "get":
            extra = encode_form(rng, random_params(rng))
            query = (query + "&" + extra if query else "?" + extra) if extra else query
        elif kind == "json":
            doc = {text(rng, 8): text(rng, 16) for _ in range(rng.randint(0, 4))}
            body = json.dumps(doc, ensure_ascii=rng.random() < 0.5)
            digest = hashlib.sha256(body.encode("utf-8")).hexdigest()
            query = (query + "&" if query else "?") + "bodySHA256=" + digest
        else:
            pairs = random_params(rng)
            body = encode_form(rng, pairs)
        url = assemble(scheme, host, port, path, query)
        signed = signed_variant(rng, scheme, host, port, path, query)
        signature = validator.compute_signature(signed, form_of(pairs), algorithm)

        def python_accepts(url, pairs, body):
            params = body if kind == "json" else form_of(pairs)
            try:
                return validator.validate(url, params, signature, algorithm)
            except (TypeError, ValueError):
                # twilio-python raises on a JSON body whose URL lost its bodySHA256: a rejection.
                return False

        if not python_accepts(url, pairs, body):
            return False  # a URL twilio-python itself normalises differently; draw again
        common = dict(mode=mode, kind=kind, signature=signature, settings=settings, **keys)
        self.add(tamper=None, url=url, body=body, expect="ok", **common)
        if kind == "form" and pairs:
            self.add(tamper="reencoded", url=url, body=encode_form(rng, pairs), expect="ok", **common)

        tampers = ["path", "query"] + {"form": ["name", "value"] if pairs else [], "get": [], "json": ["body"]}[kind]
        for tamper in tampers:
            for _ in range(20):
                t_url, t_pairs, t_body = url, list(pairs), body
                if tamper == "path":
                    t_url = assemble(scheme, host, port, mutate(rng, path.lstrip("/")).join(["/", ""]), query)
                elif tamper == "query":
                    t_query = "?" + mutate(rng, query[1:]) if query and rng.random() < 0.7 else query + ("&" if query else "?") + "x=1"
                    t_url = assemble(scheme, host, port, path, t_query)
                elif tamper in ("name", "value"):
                    i = rng.randrange(len(pairs))
                    name, value = pairs[i]
                    t_pairs[i] = (mutate(rng, name), value) if tamper == "name" else (name, mutate(rng, value))
                    t_body = encode_form(rng, t_pairs)
                else:
                    t_body = mutate(rng, body)
                if "#" in t_url or python_accepts(t_url, t_pairs, t_body):
                    continue  # not a change twilio-python sees; try another
                self.add(tamper=tamper, url=t_url, body=t_body, expect="reject", **common)
                break
        return True

    def run(self, n):
        for mode in ["token", "shared"]:
            made = 0
            while made < n:
                if self.one(mode):
                    made += 1
                else:
                    self.retries += 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="JSON file to write")
    parser.add_argument("--n", type=int, default=200, help="genuine requests per signing mode (default 200)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random, printed)")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    generator = Generator(random.Random(seed))
    generator.run(args.n)
    cases = generator.cases
    doc = {
        "generator": {"twilio": twilio.__version__, "python": sys.version.split()[0], "seed": seed, "n": args.n},
        "cases": cases,
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=0)
    genuine = sum(c["expect"] == "ok" for c in cases)
    print(
        f"twilio-conformance: twilio {twilio.__version__}, seed {seed}: {len(cases)} cases "
        f"({genuine} genuine, {len(cases) - genuine} tampered; {generator.retries} redrawn) -> {args.out}"
    )


if __name__ == "__main__":
    main()
