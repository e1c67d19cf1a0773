#!/usr/bin/env python3
"""Checks on deploy/ that need more than a schema: run by .ci/validate-deploy.

Subcommands (each prints one line per finding and exits 1 on any failure):
  crd FILE KIND APIVERSION          parse FILE as YAML; every document has that kind and apiVersion
  routes-configmap FILE [OUT]       the ConfigMap's routes.json is strict JSON (no duplicate keys);
                                    with OUT, write it there (for `callgate check --routes OUT`)
  deployment-policy FILE            the operational invariants of deployment.yaml (shutdown
                                    timing, probes, directory mount, security context)
  shared-store DEPLOYMENT REDIS SECRET
                                    the shared-store variant: DEPLOYMENT passes deployment-policy,
                                    runs several replicas with CALLGATE_STORE from a Secret; REDIS
                                    holds a Redis Deployment (noeviction, password from the Secret)
                                    and a Service that selects it; SECRET's example store-url
                                    names that Service and password
  dashboard FILE                    Grafana JSON: uid, title, schemaVersion, a Prometheus
                                    `datasource` variable used by every panel, unique panel ids,
                                    a query on every panel
  dockerfile DOCKERFILE DOCKERIGNORE  the image's contract: rust builder with --locked, distroless
                                    cc nonroot runtime, /callgate entrypoint, USER 65532, ports
  rules-equal PLAIN PROMRULE        PrometheusRule spec.groups == the plain rules file's groups
  sync-prometheusrule PLAIN OUT     write the PrometheusRule generated from PLAIN to OUT
  metric-names [--rules F]... [--dashboard F]... [--metrics-file F]
                                    every metric, label and label value the PromQL in the rules
                                    and the dashboard refers to is one callgate exports (SPEC 8);
                                    with --metrics-file, also present in that real scrape

Needs PyYAML (the CI venv has it, via kubernetes-validate).
"""

import json
import re
import sys

import yaml

# --------------------------------------------------------------------------------------------
# SPEC section 8: the metrics callgate exports. type, {label: allowed values or None for any}
EXPORTED = {
    "callgate_inbound_calls_total": (
        "counter",
        {"decision": {"accept", "reject", "fail_open", "fail_closed", "no_gate", "shadow_reject"}},
    ),
    "callgate_gate_failures_total": (
        "counter",
        {"cause": {"timeout", "connect", "status", "malformed", "overload", "circuit_open", "config"}},
    ),
    "callgate_enrichment_dropped_total": ("counter", {"reason": {"invalid", "too_large"}}),
    "callgate_deadline_cut_total": ("counter", {}),
    "callgate_dedup_total": ("counter", {"result": {"replayed", "joined"}}),
    "callgate_circuit_transitions_total": ("counter", {"to": {"open", "half_open", "closed"}}),
    "callgate_circuits_open": ("gauge", {}),
    "callgate_shadow_calls_total": ("counter", {}),
    "callgate_gate_duration_seconds": ("histogram", {"result": {"accept", "reject", "failure"}}),
    "callgate_request_duration_seconds": ("histogram", {"route": {"voice", "proxy"}}),
    "callgate_overhead_seconds": ("histogram", {}),
    "callgate_upstream_errors_total": ("counter", {"cause": {"connect", "timeout", "protocol"}}),
    "callgate_twilio_signature_failures_total": ("counter", {}),
    "callgate_twilio_signature_mode": ("gauge", {"mode": {"enforce", "report", "off"}}),
    "callgate_routes_reloads_total": ("counter", {"result": {"ok", "error"}}),
    "callgate_routes_entries": ("gauge", {"kind": {"agent", "number"}}),
    "callgate_routes_last_reload_success": ("gauge", {}),
    "callgate_admin_writes_total": ("counter", {"result": {"ok", "error"}}),
    "callgate_tls_reloads_total": ("counter", {"result": {"ok", "error"}}),
    "callgate_checks_total": (
        "counter",
        {"type": {"external_api", "caller_list", "schedule"}, "result": {"proceed", "skip", "failure"}},
    ),
    "callgate_context_total": (
        "counter",
        {"result": {"stored", "hit", "waited", "miss", "expired", "evicted", "refused"}},
    ),
    "callgate_context_entries": ("gauge", {}),
    "callgate_credentials_reloads_total": ("counter", {"result": {"ok", "error"}}),
    "callgate_events_total": ("counter", {"result": {"delivered", "retried", "given_up"}}),
    "callgate_events_pending": ("gauge", {}),
    "callgate_events_dropped_total": ("counter", {"reason": {"queue_full", "outbox_full"}}),
    "callgate_events_outbox_ok": ("gauge", {}),
    "callgate_events_outbox_errors_total": ("counter", {}),
    "callgate_open_connections": ("gauge", {}),
    "callgate_store_up": ("gauge", {}),
    "callgate_store_errors_total": ("counter", {"op": {"read", "write", "subscribe"}}),
    "callgate_build_info": ("gauge", {"version": None}),
}
# Labels Prometheus (or the Prometheus Operator) attaches to every scraped series.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "container", "endpoint"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def series_names():
    """Every sample name a scrape can hold -> (base metric, suffix)."""
    names = {}
    for base, (kind, _) in EXPORTED.items():
        if kind == "histogram":
            for suffix in HISTOGRAM_SUFFIXES:
                names[base + suffix] = (base, suffix)
        else:
            names[base] = (base, "")
    return names


SERIES = series_names()
ALL_LABELS = TARGET_LABELS | {"le"} | {l for _, labels in EXPORTED.values() for l in labels}

# --------------------------------------------------------------------------------------------
# A small PromQL scanner: enough to find every metric selector, its matchers, and the label
# names in by/without/on/ignoring/group_left/group_right clauses. Not a full parser.
TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<var>\$\{[^}]*\}|\$\w+)
  | (?P<number>(?:0x[0-9a-fA-F]+|[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\.[0-9]+)[a-zA-Z]*)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^<>=(){},@])
    """,
    re.VERBOSE,
)
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "start", "end"}
LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
AGGREGATORS = {
    "sum", "avg", "min", "max", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "count_values", "group", "limitk", "limit_ratio",
}


class PromQLError(Exception):
    pass


def tokenize(expr):
    tokens = []
    pos = 0
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if not m:
            raise PromQLError(f"cannot scan at {expr[pos:pos + 20]!r}")
        pos = m.end()
        kind = m.lastgroup
        if kind in ("ws", "comment"):
            continue
        tokens.append((kind, m.group()))
    return tokens


def unquote(s):
    if s[0] == "`":
        return s[1:-1]
    return bytes(s[1:-1], "utf-8").decode("unicode_escape")


def scan(expr):
    """-> (selectors, grouping_labels): selectors are (name or None, [(label, op, value)])."""
    tokens = tokenize(expr)
    selectors, grouping = [], []
    i = 0

    def next_is(j, value):
        return j < len(tokens) and tokens[j] == ("op", value)

    def matchers(j):
        """tokens[j] is '{': -> (list, index after '}')."""
        out = []
        j += 1
        while not next_is(j, "}"):
            if j + 2 >= len(tokens):
                raise PromQLError("unterminated label matcher")
            (k1, label), (k2, op), (k3, value) = tokens[j], tokens[j + 1], tokens[j + 2]
            if k1 not in ("ident", "string") or k2 != "op" or k3 != "string":
                raise PromQLError(f"bad label matcher near {label!r}")
            out.append((unquote(label) if k1 == "string" else label, op, unquote(value)))
            j += 3
            if next_is(j, ","):
                j += 1
        return out, j + 1

    while i < len(tokens):
        kind, text = tokens[i]
        if kind == "ident" and text in LABEL_LIST_KEYWORDS:
            i += 1
            if next_is(i, "("):
                i += 1
                while not next_is(i, ")"):
                    if i >= len(tokens):
                        raise PromQLError(f"unterminated {text}(...)")
                    if tokens[i][0] == "ident":
                        grouping.append(tokens[i][1])
                    i += 1
                i += 1
            continue
        if kind == "ident" and text.lower() in KEYWORDS:
            i += 1
            continue
        if kind == "ident" and next_is(i + 1, "("):
            i += 1  # a function or an aggregation
            continue
        if kind == "ident" and text in AGGREGATORS and i + 1 < len(tokens) and tokens[i + 1][1] in ("by", "without"):
            i += 1  # `sum by (...) (...)`
            continue
        if kind == "ident":
            if next_is(i + 1, "{"):
                m, i = matchers(i + 1)
            else:
                m, i = [], i + 1
            selectors.append((text, m))
            continue
        if kind == "op" and text == "{":
            m, i = matchers(i)
            name = next((v for l, o, v in m if l == "__name__" and o == "="), None)
            selectors.append((name, [x for x in m if x[0] != "__name__"]))
            continue
        i += 1
    return selectors, grouping


def literal_alternatives(regex):
    """'a|b' -> {'a','b'} when the regex is only literal alternatives, else None."""
    parts = regex.split("|")
    if all(re.fullmatch(r"[A-Za-z0-9_]+", p) for p in parts):
        return set(parts)
    return None


def check_expr(where, expr, problems, referenced):
    try:
        selectors, grouping = scan(expr)
    except PromQLError as e:
        problems.append(f"{where}: cannot scan the query: {e}")
        return
    if not selectors:
        problems.append(f"{where}: no metric in the query")
    for name, matchers in selectors:
        if name is None:
            problems.append(f"{where}: selector without a metric name")
            continue
        if name not in SERIES:
            problems.append(f"{where}: {name} is not a metric callgate exports")
            continue
        base, suffix = SERIES[name]
        labels = EXPORTED[base][1]
        fixed = {}
        for label, op, value in matchers:
            if label in TARGET_LABELS:
                continue
            if label == "le" and suffix == "_bucket":
                continue
            if label not in labels:
                problems.append(f"{where}: {name} has no label {label!r}")
                continue
            allowed = labels[label]
            if allowed is None:
                continue
            if op == "=":
                values = {value}
            elif op == "=~":
                values = literal_alternatives(value) or set()
            else:
                values = set()
            for v in sorted(values - allowed):
                problems.append(f"{where}: {name}{{{label}}} is never {v!r} (one of {sorted(allowed)})")
            if op == "=" and value in allowed:
                fixed[label] = value
        referenced.add((name, tuple(sorted(fixed.items()))))
    for label in grouping:
        if label not in ALL_LABELS:
            problems.append(f"{where}: grouping by {label!r}, a label no callgate series has")


# --------------------------------------------------------------------------------------------
def load_yaml_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def cmd_crd(path, kind, api_version):
    docs = load_yaml_docs(path)
    if not docs:
        return [f"{path}: no YAML document"]
    problems = []
    for d in docs:
        if d.get("kind") != kind or d.get("apiVersion") != api_version:
            problems.append(f"{path}: expected {api_version} {kind}, found {d.get('apiVersion')} {d.get('kind')}")
        if not (d.get("metadata") or {}).get("name"):
            problems.append(f"{path}: metadata.name missing")
        if not isinstance(d.get("spec"), dict):
            problems.append(f"{path}: spec missing")
    return problems


def strict_json(text):
    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise ValueError(f"duplicate key(s) {dup}")
        return dict(pairs)

    return json.loads(text, object_pairs_hook=no_duplicates)


def cmd_routes_configmap(path, out=None):
    docs = [d for d in load_yaml_docs(path) if d.get("kind") == "ConfigMap"]
    if len(docs) != 1:
        return [f"{path}: expected one ConfigMap, found {len(docs)}"]
    text = (docs[0].get("data") or {}).get("routes.json")
    if text is None:
        return [f"{path}: data.routes.json missing"]
    try:
        table = strict_json(text)
    except ValueError as e:
        return [f"{path}: routes.json is not valid JSON: {e}"]
    problems = []
    if set(table) - {"agents", "numbers"}:
        problems.append(f"{path}: routes.json has unknown top-level keys {sorted(set(table) - {'agents', 'numbers'})}")
    for number in table.get("numbers", {}):
        if not re.fullmatch(r"\+[0-9]{2,15}", number):
            problems.append(f"{path}: {number!r} is not E.164")
    if out:
        with open(out, "w") as f:
            f.write(text)
    return problems


def parse_duration(s):
    m = re.fullmatch(r"([0-9]+)(ms|s|m)", str(s))
    if not m:
        return None
    n, unit = int(m.group(1)), m.group(2)
    return {"ms": n / 1000, "s": n, "m": n * 60}[unit]


def cmd_deployment_policy(path):
    docs = [d for d in load_yaml_docs(path) if d.get("kind") == "Deployment"]
    if len(docs) != 1:
        return [f"{path}: expected one Deployment, found {len(docs)}"]
    pod = docs[0]["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod.get("containers", [])}
    problems = []
    cg = containers.get("callgate")
    if cg is None:
        return [f"{path}: no container named callgate"]
    env = {e["name"]: e for e in cg.get("env", [])}

    def val(name):
        return (env.get(name) or {}).get("value")

    want = {
        "CALLGATE_LISTEN": "0.0.0.0:8080",
        "CALLGATE_ADMIN_LISTEN": "0.0.0.0:9090",
        "CALLGATE_UPSTREAM": "http://127.0.0.1:3000",
        "CALLGATE_ROUTES": "/etc/callgate/routes/routes.json",
        "CALLGATE_LOG_FORMAT": "json",
    }
    for name, value in want.items():
        if val(name) != value:
            problems.append(f"{path}: callgate env {name} should be {value!r}, is {val(name)!r}")
    if not val("CALLGATE_PUBLIC_URL"):
        problems.append(f"{path}: callgate env CALLGATE_PUBLIC_URL missing")
    if val("CALLGATE_TWILIO_SIGNATURE") not in (None, "enforce"):
        problems.append(f"{path}: CALLGATE_TWILIO_SIGNATURE must be enforce (or unset) in the shipped Deployment")
    signed = [p.strip() for p in (val("CALLGATE_SIGNED_PATHS") or "").split(",") if p.strip()]
    if not signed or any(not p.startswith("/") for p in signed):
        problems.append(f"{path}: CALLGATE_SIGNED_PATHS should list the status callback and action paths")
    for name in ("CALLGATE_TWILIO_AUTH_TOKENS", "CALLGATE_API_KEYS"):
        if "secretKeyRef" not in ((env.get(name) or {}).get("valueFrom") or {}):
            problems.append(f"{path}: callgate env {name} must come from a Secret (secretKeyRef)")

    ports = {p.get("name"): p.get("containerPort") for p in cg.get("ports", [])}
    if ports.get("http") != 8080 or ports.get("admin") != 9090:
        problems.append(f"{path}: callgate ports should be http:8080 and admin:9090, are {ports}")
    for probe, route in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = (cg.get(probe) or {}).get("httpGet") or {}
        if get.get("path") != route or get.get("port") not in ("admin", 9090):
            problems.append(f"{path}: callgate {probe} should GET {route} on port admin")

    # The routes ConfigMap: a directory mount at the directory of CALLGATE_ROUTES, no subPath.
    routes_dir = (val("CALLGATE_ROUTES") or "").rsplit("/", 1)[0]
    mounts = [m for m in cg.get("volumeMounts", []) if m.get("mountPath") == routes_dir]
    if len(mounts) != 1:
        problems.append(f"{path}: callgate has no volume mounted at {routes_dir}")
    else:
        if "subPath" in mounts[0] or "subPathExpr" in mounts[0]:
            problems.append(f"{path}: the routes volume uses subPath: ConfigMap updates would never reach it")
        vol = next((v for v in pod.get("volumes", []) if v.get("name") == mounts[0]["name"]), {})
        if "configMap" not in vol:
            problems.append(f"{path}: the routes volume is not a ConfigMap")

    # Shutdown: preStop sleep + CALLGATE_SHUTDOWN_GRACE (+ margin) within the pod's grace.
    sleep = (((cg.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get("seconds")
    if not isinstance(sleep, int) or sleep < 1:
        problems.append(f"{path}: callgate needs a preStop sleep (lifecycle.preStop.sleep.seconds)")
        sleep = 0
    grace = parse_duration(val("CALLGATE_SHUTDOWN_GRACE") or "20s")
    if grace is None:
        problems.append(f"{path}: CALLGATE_SHUTDOWN_GRACE {val('CALLGATE_SHUTDOWN_GRACE')!r} is not a duration")
        grace = 20
    tgps = pod.get("terminationGracePeriodSeconds", 30)
    if tgps < sleep + grace + 5:
        problems.append(
            f"{path}: terminationGracePeriodSeconds {tgps} < preStop {sleep}s + shutdown grace {grace:g}s + 5s margin"
        )
    for name, c in containers.items():
        if name == "callgate":
            continue
        other = (((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get("seconds", 0)
        if other < sleep + grace:
            problems.append(
                f"{path}: container {name} gets SIGTERM after {other}s, before callgate has drained "
                f"(preStop {sleep}s + grace {grace:g}s)"
            )

    sc = cg.get("securityContext") or {}
    pod_sc = pod.get("securityContext") or {}
    expect_sc = {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
    }
    for key, value in expect_sc.items():
        if sc.get(key, pod_sc.get(key)) != value:
            problems.append(f"{path}: callgate securityContext.{key} should be {value}")
    if (sc.get("capabilities") or {}).get("drop") != ["ALL"]:
        problems.append(f"{path}: callgate securityContext.capabilities.drop should be [ALL]")
    seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
    if seccomp != "RuntimeDefault":
        problems.append(f"{path}: callgate seccompProfile should be RuntimeDefault")
    res = cg.get("resources") or {}
    if not (res.get("requests") or {}).get("cpu") or not (res.get("requests") or {}).get("memory"):
        problems.append(f"{path}: callgate needs cpu and memory requests")
    if not (res.get("limits") or {}).get("memory"):
        problems.append(f"{path}: callgate needs a memory limit")
    return problems


def cmd_shared_store(deployment, redis, secret):
    problems = cmd_deployment_policy(deployment)
    dep = next(d for d in load_yaml_docs(deployment) if d.get("kind") == "Deployment")
    if (dep["spec"].get("replicas") or 1) < 2:
        problems.append(f"{deployment}: a shared store is for several replicas; replicas is {dep['spec'].get('replicas')}")
    cg = next(c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "callgate")
    env = {e["name"]: e for e in cg.get("env", [])}
    ref = ((env.get("CALLGATE_STORE") or {}).get("valueFrom") or {}).get("secretKeyRef") or {}
    if not ref.get("key"):
        problems.append(f"{deployment}: CALLGATE_STORE must come from a Secret (the URL may hold the password)")

    docs = load_yaml_docs(redis)
    deps = [d for d in docs if d.get("kind") == "Deployment"]
    svcs = [d for d in docs if d.get("kind") == "Service"]
    if len(deps) != 1 or len(svcs) != 1:
        return problems + [f"{redis}: expected one Deployment and one Service"]
    pod = deps[0]["spec"]["template"]
    labels = pod["metadata"].get("labels") or {}
    selector = svcs[0]["spec"].get("selector") or {}
    if not selector or any(labels.get(k) != v for k, v in selector.items()):
        problems.append(f"{redis}: the Service's selector {selector} does not select the Redis pods {labels}")
    container = pod["spec"]["containers"][0]
    args = container.get("args") or []
    if "--maxmemory-policy" not in args or args[args.index("--maxmemory-policy") + 1] != "noeviction":
        problems.append(f"{redis}: Redis must not evict keys (--maxmemory-policy noeviction): the table has no TTL")
    if "--requirepass" not in args:
        problems.append(f"{redis}: Redis needs a password (--requirepass)")
    ports = {p.get("name"): p.get("containerPort") for p in container.get("ports", [])}
    targets = [p.get("targetPort") for p in svcs[0]["spec"].get("ports", [])]
    if not any(t in ports or t in ports.values() for t in targets):
        problems.append(f"{redis}: the Service's targetPort {targets} is none of the container's ports {ports}")

    data = next((d for d in load_yaml_docs(secret) if d.get("kind") == "Secret"), {}).get("stringData") or {}
    url = data.get(ref.get("key", ""), "")
    m = re.fullmatch(r"redis://(?::([^@]*)@)?([^:/]+)(?::([0-9]+))?(?:/([0-9]+))?", url)
    name = svcs[0]["metadata"]["name"]
    if not m:
        problems.append(f"{secret}: {ref.get('key')} is not a redis:// URL callgate accepts")
    else:
        if m.group(2) != name:
            problems.append(f"{secret}: {ref.get('key')} names host {m.group(2)!r}, not the Redis Service {name!r}")
        if m.group(1) != data.get("redis-password"):
            problems.append(f"{secret}: {ref.get('key')}'s password is not redis-password")
    return problems


# --------------------------------------------------------------------------------------------
def plain_groups(path):
    doc = load_yaml_docs(path)
    if len(doc) != 1 or not isinstance(doc[0].get("groups"), list):
        raise ValueError(f"{path}: expected one document with a groups list")
    return doc[0]["groups"]


def cmd_rules_equal(plain, promrule):
    groups = plain_groups(plain)
    docs = load_yaml_docs(promrule)
    if len(docs) != 1 or docs[0].get("kind") != "PrometheusRule":
        return [f"{promrule}: expected one PrometheusRule"]
    theirs = (docs[0].get("spec") or {}).get("groups")
    if theirs == groups:
        return []
    problems = [f"{promrule}: spec.groups differs from {plain} (regenerate: .ci/validate-deploy --sync-prometheusrule)"]
    mine = {r.get("alert") or r.get("record"): r for g in groups for r in g.get("rules", [])}
    other = {r.get("alert") or r.get("record"): r for g in theirs or [] for r in g.get("rules", [])}
    for name in sorted(set(mine) | set(other)):
        if mine.get(name) != other.get(name):
            problems.append(f"  rule {name} differs")
    return problems


class LiteralDumper(yaml.SafeDumper):
    pass


def _str(dumper, s):
    style = "|" if "\n" in s else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", s, style=style)


LiteralDumper.add_representer(str, _str)


def cmd_sync(plain, out):
    groups = plain_groups(plain)
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "callgate",
            "labels": {
                "app.kubernetes.io/name": "voice-engine",
                "app.kubernetes.io/component": "callgate",
            },
        },
        "spec": {"groups": groups},
    }
    header = (
        "# GENERATED from deploy/prometheus/callgate-rules.yaml by\n"
        "#   .ci/validate-deploy --sync-prometheusrule\n"
        "# Do not edit: change the plain rules file and regenerate (CI checks the two are equal).\n"
        "# If your Prometheus selects rules by label (kube-prometheus-stack: `release: <helm\n"
        "# release name>`), add that label to metadata.labels after generating, or via kustomize.\n"
    )
    body = yaml.dump(doc, Dumper=LiteralDumper, sort_keys=False, width=100000, default_flow_style=False)
    with open(out, "w") as f:
        f.write(header + body)
    return []


# --------------------------------------------------------------------------------------------
def dashboard_queries(path):
    """-> (problems, [(where, expr, legend)]) for every target of every panel."""
    with open(path) as f:
        dash = json.load(f)
    problems, queries = [], []
    variables = {v.get("name"): v for v in (dash.get("templating") or {}).get("list", [])}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problems.append(f"{path}: no `datasource` variable of type datasource/prometheus")
    if not dash.get("uid") or not dash.get("title"):
        problems.append(f"{path}: uid and title are required")

    def walk(panels):
        for p in panels:
            yield p
            yield from walk(p.get("panels") or [])

    ids = set()
    for p in walk(dash.get("panels") or []):
        where = f"{path}: panel {p.get('id')} {p.get('title')!r}"
        if p.get("id") in ids:
            problems.append(f"{where}: duplicate panel id")
        ids.add(p.get("id"))
        if p.get("type") == "row":
            continue
        if (p.get("datasource") or {}).get("uid") != "${datasource}":
            problems.append(f"{where}: datasource should be ${{datasource}}")
        targets = p.get("targets") or []
        if not targets:
            problems.append(f"{where}: no query")
        for t in targets:
            if not t.get("expr"):
                problems.append(f"{where}: target {t.get('refId')} has no expr")
                continue
            queries.append((f"{where} [{t.get('refId')}]", t["expr"], t.get("legendFormat") or ""))
    for name, v in variables.items():
        if v.get("type") == "query":
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", q or "")
            if not m:
                problems.append(f"{path}: variable {name} query {q!r} is not label_values(selector, label)")
            else:
                queries.append((f"{path}: variable {name}", m.group(1), ""))
    return problems, queries


def cmd_dashboard(path):
    problems, queries = dashboard_queries(path)
    with open(path) as f:
        dash = json.load(f)
    if not isinstance(dash.get("schemaVersion"), int) or dash["schemaVersion"] < 36:
        problems.append(f"{path}: schemaVersion {dash.get('schemaVersion')!r} is older than Grafana 9 (36)")
    if not problems:
        print(f"  {len(queries)} queries in {len(dash.get('panels') or [])} panels")
    return problems


def cmd_dockerfile(path, ignore_path):
    """Static checks only: no Docker engine on CI machines, so the image is never built here."""
    with open(path) as f:
        text = f.read()
    lines = [l.strip() for l in re.sub(r"\\\n", " ", text).splitlines() if l.strip() and not l.strip().startswith("#")]
    problems = []
    froms = [l.split()[1] for l in lines if l.upper().startswith("FROM ")]
    if len(froms) != 2 or not froms[0].startswith("rust:") or froms[1] != "gcr.io/distroless/cc-debian12:nonroot":
        problems.append(f"{path}: expected FROM rust:... then FROM gcr.io/distroless/cc-debian12:nonroot, got {froms}")
    if not any("cargo build --release --locked" in l for l in lines):
        problems.append(f"{path}: the build must be `cargo build --release --locked`")
    for want in ('USER 65532', 'EXPOSE 8080 9090', 'ENTRYPOINT ["/callgate"]', "COPY --from=build /callgate /callgate"):
        if not any(l == want or l.startswith(want + ":") for l in lines):
            problems.append(f"{path}: missing `{want}`")
    try:
        import tomllib

        with open("Cargo.toml", "rb") as f:
            cargo = tomllib.load(f)
        bins = [b.get("name") for b in cargo.get("bin", [])] or [cargo["package"]["name"]]
        if "callgate" not in bins:
            problems.append(f"Cargo.toml: no binary named callgate (bins: {bins}); the Dockerfile copies target/release/callgate")
    except ImportError:
        pass
    with open(ignore_path) as f:
        ignored = {l.strip().rstrip("/") for l in f if l.strip() and not l.startswith("#")}
    for want in ("target", ".git"):
        if want not in ignored:
            problems.append(f"{ignore_path}: should exclude {want}/")
    return problems


def parse_metrics_file(path):
    """-> {sample name: [label dict, ...]} from a Prometheus text exposition."""
    samples = {}
    line_re = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)(\{(.*)\})?\s+\S+")
    label_re = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            m = line_re.match(line)
            if m:
                samples.setdefault(m.group(1), []).append(dict(label_re.findall(m.group(3) or "")))
    return samples


def cmd_metric_names(args):
    rules, dashboards, metrics_file = [], [], None
    it = iter(args)
    for a in it:
        if a == "--rules":
            rules.append(next(it))
        elif a == "--dashboard":
            dashboards.append(next(it))
        elif a == "--metrics-file":
            metrics_file = next(it)
        else:
            return [f"unknown argument {a!r}"]
    problems, referenced = [], set()
    count = 0
    for path in rules:
        for doc in load_yaml_docs(path):
            groups = doc.get("groups") or (doc.get("spec") or {}).get("groups") or []
            for g in groups:
                for r in g.get("rules", []):
                    count += 1
                    check_expr(f"{path}: {r.get('alert') or r.get('record')}", str(r.get("expr")), problems, referenced)
    for path in dashboards:
        _, queries = dashboard_queries(path)  # structure: the `dashboard` subcommand
        for where, expr, legend in queries:
            count += 1
            check_expr(where, expr, problems, referenced)
            for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend):
                if label not in ALL_LABELS:
                    problems.append(f"{where}: legend uses {label!r}, a label no callgate series has")
    if metrics_file:
        scraped = parse_metrics_file(metrics_file)
        for name in sorted({n for n, _ in referenced} - set(scraped)):
            problems.append(f"{metrics_file}: {name} (used by the rules or dashboard) is not in the scrape")
        for name, fixed in sorted(referenced):
            if name not in scraped:
                continue
            want = dict(fixed)
            if want and not any(all(s.get(k) == v for k, v in want.items()) for s in scraped[name]):
                problems.append(f"{metrics_file}: no {name} series with {want} in the scrape")
        # SPEC 8: every metric, and every label value, is exported from start-up.
        for base, (kind, labels) in EXPORTED.items():
            name = base + ("_count" if kind == "histogram" else "")
            if name not in scraped:
                problems.append(f"{metrics_file}: SPEC metric {base} missing from the scrape")
                continue
            for label, values in labels.items():
                seen = {s.get(label) for s in scraped[name]}
                for v in sorted((values or set()) - seen):
                    problems.append(f"{metrics_file}: {name}{{{label}={v!r}}} missing from the scrape")
        unknown = sorted(n for n in scraped if n.startswith("callgate_") and n not in SERIES)
        for n in unknown:
            problems.append(f"{metrics_file}: {n} is exported but not in SPEC 8 (update the SPEC and this list)")
    if not problems:
        print(f"  {count} queries, {len(referenced)} distinct selectors checked")
    return problems


def main(argv):
    if len(argv) < 2:
        print(__doc__)
        return 2
    cmd, args = argv[1], argv[2:]
    try:
        if cmd == "crd" and len(args) == 3:
            problems = cmd_crd(*args)
        elif cmd == "routes-configmap" and len(args) in (1, 2):
            problems = cmd_routes_configmap(*args)
        elif cmd == "deployment-policy" and len(args) == 1:
            problems = cmd_deployment_policy(*args)
        elif cmd == "shared-store" and len(args) == 3:
            problems = cmd_shared_store(*args)
        elif cmd == "dockerfile" and len(args) == 2:
            problems = cmd_dockerfile(*args)
        elif cmd == "rules-equal" and len(args) == 2:
            problems = cmd_rules_equal(*args)
        elif cmd == "sync-prometheusrule" and len(args) == 2:
            problems = cmd_sync(*args)
        elif cmd == "dashboard" and len(args) == 1:
            problems = cmd_dashboard(*args)
        elif cmd == "metric-names":
            problems = cmd_metric_names(args)
        else:
            print(__doc__)
            return 2
    except (OSError, ValueError, yaml.YAMLError, KeyError, TypeError) as e:
        problems = [f"{cmd}: {type(e).__name__}: {e}"]
    for p in problems:
        print(f"  {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
