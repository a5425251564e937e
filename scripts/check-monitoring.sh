#!/usr/bin/env bash
# Validate the shipped monitoring (docs/MONITORING.md):
#   1. monitoring/prometheus/x0x-rules.yml with `promtool check rules`;
#   2. its unit tests, monitoring/prometheus/x0x-rules.test.yml, with
#      `promtool test rules` (every alert fires on a synthetic series and stays
#      quiet otherwise);
#   3. monitoring/grafana/x0x-dashboard.json with a schema check (python3):
#      schemaVersion >= 36, a Prometheus `datasource` variable, a node/instance
#      variable, unique panel ids, every panel with a datasource and targets
#      whose `expr` is not empty;
#   4. every metric name used in the rules or the dashboard is exported by the
#      node (registered in crates/x0x-bootstrap/src), by the status probe
#      (`x0x status --prometheus`, registered in crates/x0x-cli/src/cmd/status.rs),
#      or is an announced node metric listed in docs/MONITORING.md's metric
#      list; every probe metric that list documents is exported by the probe;
#   5. every alert has `for:`, a severity label, a summary and a description,
#      and a unit test in which it fires.
#
# promtool comes from Debian's `prometheus` package. When it is not on PATH
# and we are root with apt-get, the package is downloaded and only promtool is
# extracted into target/tools (`apt-get download` + `dpkg-deb -x`): the package
# is not installed, so no prometheus service is set up, enabled or started on
# this host. If that fails, the check fails. Only where it cannot be fetched
# (not root, no apt-get) does it print NOT RUN and fail, unless
# X0X_SKIP_MONITORING=1.
set -euo pipefail
cd "$(dirname "$0")/.."

rules=monitoring/prometheus/x0x-rules.yml
tests=monitoring/prometheus/x0x-rules.test.yml
dashboard=monitoring/grafana/x0x-dashboard.json
tools=$PWD/target/tools/prometheus

promtool=$(command -v promtool || true)
[ -z "$promtool" ] && [ -x "$tools/promtool" ] && promtool=$tools/promtool
if [ -z "$promtool" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "promtool missing: extracting it from Debian's prometheus package into ${tools#"$PWD"/} (not installed, no service)"
    apt-get update -qq
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    chmod 755 "$tmp"
    (cd "$tmp" && apt-get download -qq prometheus 2>/dev/null) || {
      echo "error: promtool is missing and apt-get download prometheus failed" >&2
      exit 1
    }
    dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/root"
    mkdir -p "$tools"
    install -m 755 "$tmp/root/usr/bin/promtool" "$tools/promtool"
    promtool=$tools/promtool
    "$promtool" --version >/dev/null 2>&1 || {
      echo "error: the extracted $promtool does not run" >&2
      exit 1
    }
  else
    echo "NOT RUN: promtool is not installed and cannot be fetched here (needs root and apt-get); the alerting rules were not checked" >&2
    if [ "${X0X_SKIP_MONITORING:-}" = 1 ]; then
      echo "X0X_SKIP_MONITORING=1: skipping the monitoring checks" >&2
      exit 0
    fi
    exit 1
  fi
fi

echo "--> promtool check rules ($("$promtool" --version 2>&1 | head -1); $promtool)"
"$promtool" check rules "$rules"

echo "--> promtool test rules"
(cd "$(dirname "$tests")" && "$promtool" test rules "$(basename "$tests")")

echo "--> dashboard matches its generator"
if ! python3 monitoring/grafana/gen-dashboard.py | diff -q - "$dashboard" >/dev/null; then
  echo "error: $dashboard is not what monitoring/grafana/gen-dashboard.py prints; regenerate it:" >&2
  echo "  python3 monitoring/grafana/gen-dashboard.py > $dashboard" >&2
  exit 1
fi

echo "--> dashboard, metric names and alert metadata"
python3 - "$rules" "$tests" "$dashboard" <<'PY'
import glob
import json
import re
import sys

rules_path, tests_path, dash_path = sys.argv[1:4]
errors = []


def err(msg):
    errors.append(msg)


# --- what the node exports: every metric registered in crates/x0x-bootstrap/src
# `r.register("name", "help", self.field.clone())`, the counter helper
# `c(&mut r, "name", "help", &self.field)`, or a macro table of
# `"name", "help", field;` lines. A counter is exported with the
# suffix `_total` (OpenMetrics), a gauge as is; all under the prefix `x0x_`.
exported = set()
for path in glob.glob("crates/x0x-bootstrap/src/**/*.rs", recursive=True):
    src = open(path, encoding="utf-8").read()
    if "with_prefix(\"x0x\")" not in src:
        continue
    types = dict(re.findall(r"pub\s+(\w+)\s*:\s*([^,\n]+),", src))
    types.update(re.findall(r"let\s+(\w+)\s*=\s*(\w[^;]*?)::default\(\)", src))
    calls = re.findall(
        r"(?:\.register\(|\bc\(\s*&mut\s+r,)\s*\"([a-z0-9_]+)\"\s*,\s*\"(?:[^\"\\]|\\.)*\"\s*,\s*&?(?:self\.)?(\w+)",
        src,
        re.S,
    )
    # ... and the table form `"name", "help", field;` (a registering macro).
    calls += re.findall(r"\"([a-z0-9_]+)\"\s*,\s*\"(?:[^\"\\]|\\.)*\"\s*,\s*(\w+)\s*;", src)
    for name, var in calls:
        ty = types.get(var, "")
        counter = "Counter" in ty or ty.startswith("Labelled")
        exported.add("x0x_" + name + ("_total" if counter else ""))
if not exported:
    err("found no metric registered in crates/x0x-bootstrap/src (did metrics.rs move?)")

# --- the documented list: docs/MONITORING.md between the metric-list markers
doc = open("docs/MONITORING.md", encoding="utf-8").read()
m = re.search(r"<!-- metric-list:begin -->(.*?)<!-- metric-list:end -->", doc, re.S)
documented = set(re.findall(r"`(x0x_[a-z0-9_]+)", m.group(1))) if m else set()
if not documented:
    err("docs/MONITORING.md has no metric list between <!-- metric-list:begin/end --> markers")
# --- what the status probe exports: `reg.register("x0x_status_...", ..)` in
# crates/x0x-cli/src/cmd/status.rs (`x0x status --prometheus`; all gauges).
status_src = open("crates/x0x-cli/src/cmd/status.rs", encoding="utf-8").read()
probe = set(re.findall(r"\.register\(\s*\"(x0x_status_[a-z0-9_]+)\"", status_src))
if not probe:
    err("found no x0x_status_* metric registered in crates/x0x-cli/src/cmd/status.rs")
for name in sorted(n for n in documented if n.startswith("x0x_status_")):
    if name not in probe:
        err(f"docs/MONITORING.md: {name} is documented but x0x status --prometheus does not export it")
print(f"    x0x status --prometheus exports {len(probe)} metrics")
known = exported | probe | {n for n in documented if not n.startswith("x0x_status_")}
pending = sorted(n for n in documented - exported if not n.startswith("x0x_status_"))
print(f"    node exports {len(exported)} metrics; {len(documented)} documented (probe and announced)")
if pending:
    print(f"    announced, not exported by the node yet: {', '.join(pending)}")

# Prometheus' own series used by the rules and the dashboard.
builtin = {"up"}
metric_re = re.compile(r"\bx0x_[a-z0-9_]+\b")


def check_names(where, text):
    for name in set(metric_re.findall(text)):
        if name not in known:
            err(f"{where}: metric {name} is neither exported by the node nor documented")


# --- rules: metadata per alert (a small line parser: no YAML module needed)
rules_text = open(rules_path, encoding="utf-8").read()
alerts = {}
current = None
for line in rules_text.splitlines():
    a = re.match(r"\s*- alert:\s*(\S+)", line)
    if a:
        current = a.group(1)
        if current in alerts:
            err(f"rules: alert {current} defined twice")
        alerts[current] = set()
        continue
    if current is None:
        continue
    for key in ("expr", "for", "severity", "summary", "description"):
        if re.match(rf"\s*{key}:\s*\S", line):
            alerts[current].add(key)
for name, keys in alerts.items():
    missing = {"expr", "for", "severity", "summary", "description"} - keys
    if missing:
        err(f"rules: alert {name} lacks {', '.join(sorted(missing))}")
sev = set(re.findall(r"severity:\s*(\S+)", rules_text))
if not sev <= {"critical", "warning", "info"}:
    err(f"rules: unknown severities {sorted(sev - {'critical', 'warning', 'info'})}")
check_names("rules", rules_text)

# --- tests: every alert fires at least once (a non-empty exp_alerts)
tests_text = open(tests_path, encoding="utf-8").read()
fired = set()
blocks = re.split(r"\n\s*- (?=eval_time:)|\n\s*- \{(?=eval_time)", tests_text)
for b in blocks:
    n = re.search(r"alertname:\s*(\w+)", b)
    if n and re.search(r"exp_alerts:\s*\n\s*- exp_labels", b):
        fired.add(n.group(1))
for name in alerts:
    if name not in fired:
        err(f"tests: no test in which alert {name} fires")
    if not re.search(rf"alertname:\s*{name}\b", tests_text):
        err(f"tests: alert {name} is never tested")
print(f"    {len(alerts)} alerts checked for for/severity/summary/description and a firing test")

# --- dashboard
d = json.load(open(dash_path, encoding="utf-8"))
if not isinstance(d.get("schemaVersion"), int) or d["schemaVersion"] < 36:
    err(f"dashboard: schemaVersion {d.get('schemaVersion')} < 36")
variables = {v.get("name"): v for v in d.get("templating", {}).get("list", [])}
ds = variables.get("datasource")
if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
    err("dashboard: no `datasource` variable of type datasource for prometheus")
if not ({"node", "instance"} & set(variables)):
    err("dashboard: no `node` or `instance` variable")
for vname, v in variables.items():
    if v.get("type") == "query":
        q = v.get("query")
        q = q.get("query", "") if isinstance(q, dict) else (q or "")
        if not q.strip():
            err(f"dashboard: variable {vname} has an empty query")
        check_names(f"dashboard variable {vname}", q)


def all_panels(panels):
    for p in panels:
        yield p
        yield from all_panels(p.get("panels", []))


ids = {}
count = 0
for p in all_panels(d.get("panels", [])):
    pid, title = p.get("id"), p.get("title", "?")
    if pid is None:
        err(f"dashboard: panel {title!r} has no id")
    elif pid in ids:
        err(f"dashboard: panel id {pid} used by {ids[pid]!r} and {title!r}")
    else:
        ids[pid] = title
    if "gridPos" not in p:
        err(f"dashboard: panel {title!r} has no gridPos")
    if p.get("type") == "row":
        continue
    count += 1
    pds = p.get("datasource")
    if not isinstance(pds, dict) or pds.get("uid") != "${datasource}":
        err(f"dashboard: panel {title!r} does not use the ${{datasource}} variable")
    targets = p.get("targets") or []
    if not targets:
        err(f"dashboard: panel {title!r} has no targets")
    refs = set()
    for t in targets:
        expr = (t.get("expr") or "").strip()
        if not expr:
            err(f"dashboard: panel {title!r} has a target with an empty expr")
        if t.get("refId") in refs:
            err(f"dashboard: panel {title!r} repeats refId {t.get('refId')}")
        refs.add(t.get("refId"))
        tds = t.get("datasource", pds)
        if not isinstance(tds, dict) or tds.get("uid") != "${datasource}":
            err(f"dashboard: a target of {title!r} does not use the ${{datasource}} variable")
        if expr.count("(") != expr.count(")") or expr.count("{") != expr.count("}"):
            err(f"dashboard: panel {title!r}: unbalanced brackets in {expr!r}")
        check_names(f"dashboard panel {title!r}", expr)
used = set(metric_re.findall(json.dumps(d)))
print(f"    dashboard: {count} panels and {len(used)} metric names checked")

if errors:
    print("monitoring check FAILED:", file=sys.stderr)
    for e in errors:
        print("  - " + e, file=sys.stderr)
    sys.exit(1)
print("monitoring checks passed")
PY
