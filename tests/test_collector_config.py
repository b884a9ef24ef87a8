"""Static checks of the OpenTelemetry Collector configs in collector-config/.

These tests do not run a collector. They parse every collector-config/*.yaml and check the
things that are easy to get wrong by hand: components used in a pipeline but never defined
(or defined under a slightly different id), processor order, exporters that point at
runlake on the wrong port or with /v1/traces doubled, and environment-variable syntax.

The checks are plain functions that return a list of problems, so the last tests can feed
them deliberately broken configs and prove that they catch each mistake.
"""

from __future__ import annotations

import ast
import copy
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "collector-config"
CONFIG_FILES = sorted(CONFIG_DIR.glob("*.yaml"))
EXPECTED_FILES = {
    "gateway.yaml",
    "agent.yaml",
    "loadbalancing-gateway.yaml",
    "runlake-node.yaml",
}

# The port `runlake serve` listens on by default, as documented. Only used when the
# runlake.server module does not exist (see runlake_default_port).
DOCUMENTED_RUNLAKE_PORT = 8000
OTLP_GRPC_PORT = 4317
OTLP_HTTP_PORT = 4318
TRACES_PATH = "/v1/traces"

SECTIONS = ("receivers", "processors", "exporters", "connectors", "extensions")
PIPELINE_KINDS = ("receivers", "processors", "exporters")
LOADBALANCING_TYPES = {"loadbalancing", "load_balancing"}  # renamed in recent releases

# ${env:NAME} or ${env:NAME:-default}: the collector's env provider syntax.
ENV_REF = re.compile(r"\$\{env:(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


# --------------------------------------------------------------------------- helpers


def load(path: Path) -> tuple[str, dict]:
    text = path.read_text(encoding="utf-8")
    doc = yaml.safe_load(text)
    assert isinstance(doc, dict), f"{path.name}: top level is not a mapping"
    return text, doc


def component_type(component_id: str) -> str:
    """`otlphttp/runlake` -> `otlphttp`."""
    return component_id.split("/", 1)[0]


def section(doc: dict, name: str) -> dict:
    value = doc.get(name)
    return value if isinstance(value, dict) else {}


def pipelines(doc: dict) -> dict:
    return section(section(doc, "service"), "pipelines")


def iter_strings(node):
    """Every string in a parsed YAML document, keys included (comments are not part of it)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from iter_strings(key)
            yield from iter_strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from iter_strings(item)


def env_names(doc: dict) -> set[str]:
    return {m.group("name") for s in iter_strings(doc) for m in ENV_REF.finditer(s)}


def substitute_env(value: str) -> str:
    """Replace ${env:NAME:-default} by its default and ${env:NAME} by a host-safe placeholder."""

    def repl(m: re.Match) -> str:
        if m.group("default") is not None:
            return m.group("default")
        return "env-" + m.group("name").lower().replace("_", "-")

    return ENV_REF.sub(repl, value)


def split_host_port(endpoint: str) -> tuple[str, int | None]:
    host, sep, port = substitute_env(endpoint).rpartition(":")
    if not sep or not port.isdigit():
        return endpoint, None
    return host, int(port)


def header_comment(text: str) -> list[str]:
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return lines


def runlake_default_port() -> int:
    """runlake's default port, read from runlake.server.DEFAULT_PORT.

    runlake.server is being written at the same time as these configs. Only while that
    module does not exist do we fall back to the documented 8000; once it exists, the
    configs are checked against the real constant (and a server.py without it fails).
    """
    try:
        from runlake.server import DEFAULT_PORT
    except ModuleNotFoundError as exc:
        if exc.name not in ("runlake", "runlake.server"):
            raise  # the module exists but one of its own imports is missing
        server_py = REPO_ROOT / "src" / "runlake" / "server.py"
        if server_py.exists():
            # The source exists but the package is not installed in this environment:
            # read the constant from the source instead of silently using the fallback.
            return _default_port_from_source(server_py)
        # TODO: remove this fallback once runlake/server.py has landed.
        return DOCUMENTED_RUNLAKE_PORT
    assert isinstance(DEFAULT_PORT, int), f"runlake.server.DEFAULT_PORT is {DEFAULT_PORT!r}"
    return DEFAULT_PORT


def _default_port_from_source(server_py: Path) -> int:
    tree = ast.parse(server_py.read_text(encoding="utf-8"))
    for node in tree.body:
        target = value = None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign):
            target, value = node.target, node.value
        if isinstance(target, ast.Name) and target.id == "DEFAULT_PORT":
            assert isinstance(value, ast.Constant) and isinstance(value.value, int), (
                f"{server_py}: DEFAULT_PORT is not an int literal"
            )
            return value.value
    raise AssertionError(f"{server_py} exists but defines no module-level DEFAULT_PORT")


# --------------------------------------------------------------------------- checkers
# Each returns a list of human-readable problems; an empty list means the check passed.


def reference_problems(doc: dict) -> list[str]:
    """Every id in a pipeline is a key of the matching top-level section, and vice versa."""
    problems = []
    pipes = pipelines(doc)
    if not pipes:
        return ["service.pipelines is missing or empty"]
    used: dict[str, set[str]] = {kind: set() for kind in PIPELINE_KINDS}
    connectors = section(doc, "connectors")
    for pipe_id, pipe in pipes.items():
        pipe = pipe or {}
        for kind in PIPELINE_KINDS:
            ids = pipe.get(kind) or []
            if kind != "processors" and not ids:
                problems.append(f"pipeline {pipe_id}: no {kind}")
            if not isinstance(ids, list):
                problems.append(f"pipeline {pipe_id}: {kind} is not a list")
                continue
            if len(ids) != len(set(ids)):
                problems.append(f"pipeline {pipe_id}: duplicate {kind} {ids}")
            defined = section(doc, kind)
            for component_id in ids:
                used[kind].add(component_id)
                if component_id in defined:
                    continue
                if kind != "processors" and component_id in connectors:
                    continue  # a connector may act as exporter and receiver
                problems.append(f"pipeline {pipe_id}: {kind[:-1]} {component_id!r} is not defined")
    for kind in PIPELINE_KINDS:
        for component_id in section(doc, kind):
            if component_id not in used[kind]:
                problems.append(f"{kind[:-1]} {component_id!r} is defined but used in no pipeline")
    return problems


def extension_problems(doc: dict) -> list[str]:
    problems = []
    enabled = section(doc, "service").get("extensions") or []
    defined = section(doc, "extensions")
    for ext_id in enabled:
        if ext_id not in defined:
            problems.append(f"service.extensions lists {ext_id!r}, which is not defined")
    for ext_id in defined:
        if ext_id not in enabled:
            problems.append(f"extension {ext_id!r} is defined but not in service.extensions")
    return problems


def processor_order_problems(doc: dict) -> list[str]:
    problems = []
    for pipe_id, pipe in pipelines(doc).items():
        procs = (pipe or {}).get("processors") or []
        types = [component_type(p) for p in procs]
        if not types or types[0] != "memory_limiter":
            problems.append(f"pipeline {pipe_id}: memory_limiter is not the first processor ({procs})")
        if "batch" not in types:
            problems.append(f"pipeline {pipe_id}: no batch processor ({procs})")
        elif types[-1] != "batch":
            problems.append(f"pipeline {pipe_id}: batch is not the last processor ({procs})")
    return problems


def env_syntax_problems(doc: dict) -> list[str]:
    """Every `$` in a value starts a ${env:NAME} / ${env:NAME:-default} reference (`$$` escapes)."""
    problems = []
    for value in iter_strings(doc):
        unescaped = value.replace("$$", "")
        covered = {i for m in ENV_REF.finditer(unescaped) for i in range(m.start(), m.end())}
        for i, char in enumerate(unescaped):
            if char == "$" and i not in covered:
                problems.append(f"{value!r}: use ${{env:NAME}} (or ${{env:NAME:-default}})")
                break
    return problems


def runlake_exporters(doc: dict, runlake_port: int) -> dict[str, dict]:
    """otlphttp exporters that send to runlake: named .../runlake... or aimed at runlake's port."""
    found = {}
    for exp_id, cfg in section(doc, "exporters").items():
        if component_type(exp_id) != "otlphttp":
            continue
        cfg = cfg or {}
        ports = set()
        for key in ("endpoint", "traces_endpoint"):
            if isinstance(cfg.get(key), str):
                ports.add(urlsplit(substitute_env(cfg[key])).port)
        if "runlake" in exp_id or runlake_port in ports or DOCUMENTED_RUNLAKE_PORT in ports:
            found[exp_id] = cfg
    return found


def runlake_exporter_problems(exp_id: str, cfg: dict, runlake_port: int) -> list[str]:
    problems = []
    endpoint, traces_endpoint = cfg.get("endpoint"), cfg.get("traces_endpoint")
    if not endpoint and not traces_endpoint:
        return [f"{exp_id}: neither endpoint nor traces_endpoint is set"]
    for key, value in (("endpoint", endpoint), ("traces_endpoint", traces_endpoint)):
        if value is None:
            continue
        url = urlsplit(substitute_env(str(value)))
        if url.scheme not in ("http", "https"):
            problems.append(f"{exp_id}: {key} {value!r} is not an http(s) URL")
        try:
            port = url.port
        except ValueError:
            port = None
        if port != runlake_port:
            problems.append(f"{exp_id}: {key} {value!r} does not use runlake's port {runlake_port}")
        path = url.path.rstrip("/")
        if key == "endpoint" and TRACES_PATH in path:
            problems.append(
                f"{exp_id}: endpoint {value!r} contains {TRACES_PATH}; otlphttp appends it, "
                f"so requests would go to ...{TRACES_PATH}{TRACES_PATH}"
            )
        if key == "traces_endpoint" and (path.count(TRACES_PATH) != 1 or not path.endswith(TRACES_PATH)):
            problems.append(f"{exp_id}: traces_endpoint {value!r} must end with {TRACES_PATH} once")
    headers = {str(k).lower(): str(v) for k, v in (cfg.get("headers") or {}).items()}
    auth, api_key = headers.get("authorization"), headers.get("x-api-key")
    if auth is None and api_key is None:
        problems.append(f"{exp_id}: no Authorization (Bearer) or X-API-Key header")
    if auth is not None and not re.fullmatch(r"Bearer \$\{env:[A-Za-z_][A-Za-z0-9_]*\}", auth):
        problems.append(f"{exp_id}: Authorization must be 'Bearer ${{env:NAME}}', got {auth!r}")
    if api_key is not None and not ENV_REF.fullmatch(api_key):
        problems.append(f"{exp_id}: X-API-Key must come from ${{env:NAME}}, got {api_key!r}")
    if cfg.get("compression") != "gzip":
        problems.append(f"{exp_id}: compression is {cfg.get('compression')!r}, expected gzip")
    return problems


def queue_retry_problems(exp_id: str, cfg: dict) -> list[str]:
    """retry_on_failure and sending_queue spelled as exporterhelper documents them."""
    problems = []
    retry = cfg.get("retry_on_failure")
    if not isinstance(retry, dict) or retry.get("enabled") is not True:
        problems.append(f"{exp_id}: retry_on_failure.enabled is not true")
    queue = cfg.get("sending_queue")
    if not isinstance(queue, dict) or queue.get("enabled") is not True:
        problems.append(f"{exp_id}: sending_queue.enabled is not true")
    else:
        for key in ("queue_size", "num_consumers"):
            if not isinstance(queue.get(key), int) or queue[key] <= 0:
                problems.append(f"{exp_id}: sending_queue.{key} must be a positive integer")
    return problems


def receiver_port_problems(doc: dict) -> list[str]:
    problems = []
    expected = {"grpc": OTLP_GRPC_PORT, "http": OTLP_HTTP_PORT}
    for recv_id, cfg in section(doc, "receivers").items():
        if component_type(recv_id) != "otlp":
            continue
        protocols = (cfg or {}).get("protocols") or {}
        if not protocols:
            problems.append(f"receiver {recv_id}: no protocols")
        for proto, proto_cfg in protocols.items():
            endpoint = (proto_cfg or {}).get("endpoint")
            if endpoint is None:
                problems.append(f"receiver {recv_id}: {proto} endpoint not set explicitly")
                continue
            _, port = split_host_port(str(endpoint))
            if port != expected.get(proto):
                problems.append(f"receiver {recv_id}: {proto} endpoint {endpoint!r} is not port {expected.get(proto)}")
    return problems


def loadbalancing_problems(doc: dict, runlake_port: int) -> list[str]:
    problems = []
    for exp_id, cfg in section(doc, "exporters").items():
        if component_type(exp_id) not in LOADBALANCING_TYPES:
            continue
        cfg = cfg or {}
        if cfg.get("routing_key") != "traceID":
            problems.append(f"{exp_id}: routing_key is {cfg.get('routing_key')!r}, expected traceID")
        protocol = cfg.get("protocol") or {}
        if set(protocol) != {"otlp"}:
            problems.append(f"{exp_id}: protocol must have exactly the `otlp` key (gRPC), got {sorted(protocol)}")
        otlp = protocol.get("otlp") or {}
        if "endpoint" in otlp:
            problems.append(f"{exp_id}: protocol.otlp.endpoint must not be set (the resolver fills it in)")
        problems += queue_retry_problems(f"{exp_id}.protocol.otlp", otlp)
        hostnames = ((cfg.get("resolver") or {}).get("static") or {}).get("hostnames") or []
        if len(hostnames) < 2:
            problems.append(f"{exp_id}: resolver.static.hostnames lists fewer than two nodes")
        for hostname in hostnames:
            _, port = split_host_port(str(hostname))
            if port == runlake_port:
                problems.append(
                    f"{exp_id}: {hostname!r} is runlake's HTTP port; the loadbalancing exporter "
                    f"speaks OTLP/gRPC, so it must target a per-node collector (e.g. :4317)"
                )
    return problems


# --------------------------------------------------------------------------- tests

config_params = pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.name)


def test_expected_config_files_exist():
    names = {p.name for p in CONFIG_FILES}
    assert EXPECTED_FILES <= names, f"missing: {sorted(EXPECTED_FILES - names)}"
    assert (CONFIG_DIR / "README.md").is_file()


@config_params
def test_is_valid_yaml_with_collector_sections(path):
    _, doc = load(path)
    assert set(doc) <= set(SECTIONS) | {"service"}, f"unknown top-level keys: {set(doc) - set(SECTIONS) - {'service'}}"
    assert pipelines(doc), "no service.pipelines"


@config_params
def test_starts_with_comment_header(path):
    text, doc = load(path)
    header = header_comment(text)
    assert header, f"{path.name} must start with a comment header"
    assert len(header) >= 5, "header is too short to say purpose, topology, how to run and env vars"
    joined = "\n".join(header)
    run_cmd = f"otelcol-contrib --config collector-config/{path.name}"
    assert run_cmd in joined, f"header does not show how to run it ({run_cmd!r})"
    assert "Topology" in joined, "header does not name the topology"
    assert "Environment variables" in joined, "header does not list environment variables"
    undocumented = sorted(name for name in env_names(doc) if name not in joined)
    assert not undocumented, f"env vars used but not described in the header: {undocumented}"


@config_params
def test_pipeline_components_are_defined_and_used(path):
    _, doc = load(path)
    assert reference_problems(doc) == []


@config_params
def test_extensions_defined_and_enabled(path):
    _, doc = load(path)
    assert extension_problems(doc) == []
    assert "health_check" in section(doc, "extensions")


@config_params
def test_memory_limiter_first_and_batch_last(path):
    _, doc = load(path)
    assert processor_order_problems(doc) == []
    limiter = section(doc, "processors")["memory_limiter"]
    assert limiter.get("check_interval"), "memory_limiter without check_interval never checks"
    # Either a fixed limit (limit_mib) or a share of the cgroup limit (limit_percentage); the
    # spike must be below the limit, or the soft limit (limit - spike) is not positive.
    if "limit_mib" in limiter:
        assert 0 < limiter.get("spike_limit_mib", 1) < limiter["limit_mib"]
    else:
        assert 0 < limiter["spike_limit_percentage"] < limiter["limit_percentage"] <= 100


@config_params
def test_env_references_use_env_provider_syntax(path):
    _, doc = load(path)
    assert env_syntax_problems(doc) == []


@config_params
def test_otlp_receivers_use_standard_ports(path):
    _, doc = load(path)
    assert receiver_port_problems(doc) == []


@config_params
def test_network_exporters_have_retry_and_queue(path):
    _, doc = load(path)
    problems = []
    for exp_id, cfg in section(doc, "exporters").items():
        if component_type(exp_id) in {"otlp", "otlphttp"}:
            problems += queue_retry_problems(exp_id, cfg or {})
    assert problems == []


@config_params
def test_runlake_exporters_point_at_runlake_correctly(path):
    _, doc = load(path)
    port = runlake_default_port()
    problems = []
    for exp_id, cfg in runlake_exporters(doc, port).items():
        problems += runlake_exporter_problems(exp_id, cfg, port)
    assert problems == []


@config_params
def test_loadbalancing_exporters_target_grpc_collectors(path):
    _, doc = load(path)
    assert loadbalancing_problems(doc, runlake_default_port()) == []


def test_runlake_is_reached_where_expected():
    port = runlake_default_port()
    for name in ("gateway.yaml", "runlake-node.yaml"):
        _, doc = load(CONFIG_DIR / name)
        assert "otlphttp/runlake" in runlake_exporters(doc, port), f"{name}: no otlphttp/runlake exporter"
    _, gateway = load(CONFIG_DIR / "gateway.yaml")
    exporters = pipelines(gateway)["traces"]["exporters"]
    assert {component_type(e) for e in exporters} >= {"otlp", "otlphttp"}, "gateway must fan out"
    _, lb = load(CONFIG_DIR / "loadbalancing-gateway.yaml")
    assert any(component_type(e) in LOADBALANCING_TYPES for e in section(lb, "exporters"))
    _, agent = load(CONFIG_DIR / "agent.yaml")
    assert not runlake_exporters(agent, port), "the agent sends to the gateway, not to runlake"


def test_configs_use_runlake_default_port():
    # 8000 only while runlake.server does not exist; afterwards the real DEFAULT_PORT.
    port = runlake_default_port()
    if port == DOCUMENTED_RUNLAKE_PORT:
        assert port == 8000
    used = set()
    for path in CONFIG_FILES:
        _, doc = load(path)
        for cfg in runlake_exporters(doc, port).values():
            used.add(urlsplit(substitute_env(cfg.get("endpoint") or cfg["traces_endpoint"])).port)
    assert used == {port}


# ---------------------------------------------------------- the checkers catch mistakes


def _gateway() -> dict:
    return copy.deepcopy(load(CONFIG_DIR / "gateway.yaml")[1])


def _break_reference(doc):
    doc["service"]["pipelines"]["traces"]["exporters"] = ["otlp", "otlphttp/runlak"]


def _break_order(doc):
    doc["service"]["pipelines"]["traces"]["processors"] = ["batch", "memory_limiter"]


def _drop_batch(doc):
    doc["service"]["pipelines"]["traces"]["processors"] = ["memory_limiter"]


def _undefined_extension(doc):
    doc["service"]["extensions"] = ["health_check", "pprof"]


def _unenabled_extension(doc):
    doc["service"]["extensions"] = []


def _old_env_syntax(doc):
    doc["exporters"]["otlphttp/runlake"]["headers"]["Authorization"] = "Bearer ${RUNLAKE_API_KEY}"


def _doubled_traces_path(doc):
    doc["exporters"]["otlphttp/runlake"]["endpoint"] = "http://runlake:8000/v1/traces"


def _wrong_port(doc):
    doc["exporters"]["otlphttp/runlake"]["endpoint"] = "http://runlake:8080"


def _literal_key(doc):
    doc["exporters"]["otlphttp/runlake"]["headers"]["Authorization"] = "Bearer sk-123"


def _no_queue(doc):
    del doc["exporters"]["otlphttp/runlake"]["sending_queue"]


def _lb_to_runlake_http(doc):
    doc["exporters"]["loadbalancing"] = {
        "routing_key": "traceID",
        "protocol": {"otlp": {"tls": {"insecure": True}}},
        "resolver": {"static": {"hostnames": ["runlake-1:8000", "runlake-2:8000"]}},
    }


def _exporter_problems(doc):
    port = DOCUMENTED_RUNLAKE_PORT
    problems = loadbalancing_problems(doc, port)
    for exp_id, cfg in runlake_exporters(doc, port).items():
        problems += runlake_exporter_problems(exp_id, cfg, port) + queue_retry_problems(exp_id, cfg)
    return problems


@pytest.mark.parametrize(
    ("mutate", "checker"),
    [
        (_break_reference, reference_problems),
        (_break_order, processor_order_problems),
        (_drop_batch, processor_order_problems),
        (_undefined_extension, extension_problems),
        (_unenabled_extension, extension_problems),
        (_old_env_syntax, env_syntax_problems),
        (_old_env_syntax, _exporter_problems),
        (_doubled_traces_path, _exporter_problems),
        (_wrong_port, _exporter_problems),
        (_literal_key, _exporter_problems),
        (_no_queue, _exporter_problems),
        (_lb_to_runlake_http, _exporter_problems),
    ],
    ids=lambda f: f.__name__.strip("_"),
)
def test_checkers_catch_broken_config(mutate, checker):
    doc = _gateway()
    assert checker(doc) == [], "the unmodified gateway config should pass this check"
    mutate(doc)
    assert checker(doc), f"{checker.__name__} did not notice {mutate.__name__}"
