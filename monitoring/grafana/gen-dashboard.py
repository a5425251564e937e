#!/usr/bin/env python3
"""Generates monitoring/grafana/x0x-dashboard.json (docs/MONITORING.md).

Edit the panels here, then: python3 monitoring/grafana/gen-dashboard.py > monitoring/grafana/x0x-dashboard.json
scripts/check-monitoring.sh fails when the JSON is not what this script prints."""
import json
DS = {"type": "prometheus", "uid": "${datasource}"}
N = '{job="x0x", instance=~"$instance"}'
def sel(extra=""):
    return '{job="x0x", instance=~"$instance"%s}' % ((", " + extra) if extra else "")
panels = []
pid = [0]
y = [0]
def nid():
    pid[0] += 1
    return pid[0]
def row(title):
    panels.append({"type": "row", "title": title, "id": nid(), "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": y[0]}, "panels": []})
    y[0] += 1
x = [0]
def place(w, h):
    if x[0] + w > 24:
        x[0] = 0; y[0] += place.h
        place.h = 0
    pos = {"h": h, "w": w, "x": x[0], "y": y[0]}
    x[0] += w; place.h = max(place.h, h)
    return pos
place.h = 0
def newline():
    if x[0]:
        y[0] += place.h; x[0] = 0; place.h = 0
def target(expr, legend="", ref="A", instant=False, fmt="time_series"):
    t = {"datasource": DS, "refId": ref, "expr": expr, "legendFormat": legend or "__auto",
         "range": not instant, "instant": instant, "format": fmt}
    return t
def ts(title, targets, unit="short", w=12, h=8, desc="", stack=False):
    p = {"type": "timeseries", "title": title, "id": nid(), "datasource": DS,
         "description": desc, "gridPos": place(w, h),
         "targets": [target(e, l, chr(65 + i)) for i, (e, l) in enumerate(targets)],
         "fieldConfig": {"defaults": {"unit": unit, "custom": {"lineWidth": 1, "fillOpacity": 10,
                         "stacking": {"mode": "normal" if stack else "none", "group": "A"}}},
                         "overrides": []},
         "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
                     "tooltip": {"mode": "multi", "sort": "desc"}}}
    panels.append(p)
def stat(title, expr, legend="", unit="short", w=4, h=4, desc="", mappings=None, thresholds=None):
    p = {"type": "stat", "title": title, "id": nid(), "datasource": DS, "description": desc,
         "gridPos": place(w, h), "targets": [target(expr, legend, instant=True)],
         "fieldConfig": {"defaults": {"unit": unit, "mappings": mappings or [],
                         "thresholds": thresholds or {"mode": "absolute", "steps": [{"color": "green", "value": None}]}},
                         "overrides": []},
         "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                     "colorMode": "background", "graphMode": "none", "textMode": "auto"}}
    panels.append(p)
UPDOWN = [{"type": "value", "options": {"0": {"text": "DOWN", "color": "red", "index": 0},
                                         "1": {"text": "UP", "color": "green", "index": 1}}}]
RG = {"mode": "absolute", "steps": [{"color": "red", "value": None}, {"color": "green", "value": 1}]}

row("Fleet, seen by the status probe (x0x status --prometheus)")
stat("Fleet healthy", "x0x_status_healthy", "healthy", desc="x0x_status_healthy: 1 when every node answers and sees all its peers.",
     mappings=[{"type": "value", "options": {"0": {"text": "UNHEALTHY", "color": "red", "index": 0},
                                              "1": {"text": "HEALTHY", "color": "green", "index": 1}}}], thresholds=RG)
stat("Nodes answering", 'sum(x0x_status_node_up) or vector(0)', "up", desc="Nodes that answer the status request.")
stat("Nodes not answering", 'count(x0x_status_node_up == 0) or vector(0)', "down",
     thresholds={"mode": "absolute", "steps": [{"color": "green", "value": None}, {"color": "red", "value": 1}]})
stat("Mesh links down", 'count(x0x_status_mesh_link_up == 0) or vector(0)', "links down",
     thresholds={"mode": "absolute", "steps": [{"color": "green", "value": None}, {"color": "red", "value": 1}]})
stat("Probe duration", "x0x_status_probe_duration_seconds", "probe", unit="s",
     thresholds={"mode": "absolute", "steps": [{"color": "green", "value": None}, {"color": "orange", "value": 5}, {"color": "red", "value": 10}]})
stat("Probe RTT (max)", "max(x0x_status_node_rtt_seconds)", "max rtt", unit="s")
newline()
# nodes table
p = {"type": "table", "title": "Nodes", "id": nid(), "datasource": DS, "gridPos": place(12, 9),
     "description": "One row per node: answers the probe, RTT from the monitoring host, mesh peers seen / expected.",
     "targets": [target('x0x_status_node_up{node=~"$status_node"}', "", "A", True, "table"),
                 target('x0x_status_node_rtt_seconds{node=~"$status_node"}', "", "B", True, "table"),
                 target('x0x_status_node_peers{node=~"$status_node"}', "", "C", True, "table"),
                 target('x0x_status_node_expected_peers{node=~"$status_node"}', "", "D", True, "table")],
     "transformations": [
         {"id": "merge", "options": {}},
         {"id": "organize", "options": {"excludeByName": {"Time": True, "__name__": True, "job": True, "instance": True},
                                        "indexByName": {"node": 0, "addr": 1, "Value #A": 2, "Value #B": 3, "Value #C": 4, "Value #D": 5},
                                        "renameByName": {"Value #A": "up", "Value #B": "rtt", "Value #C": "peers", "Value #D": "expected peers"}}}],
     "fieldConfig": {"defaults": {}, "overrides": [
         {"matcher": {"id": "byName", "options": "up"}, "properties": [{"id": "mappings", "value": UPDOWN}, {"id": "custom.cellOptions", "value": {"type": "color-background"}}]},
         {"matcher": {"id": "byName", "options": "rtt"}, "properties": [{"id": "unit", "value": "s"}]}]},
     "options": {"showHeader": True}}
panels.append(p)
p = {"type": "table", "title": "Mesh matrix: does FROM (row) see TO (column)?", "id": nid(), "datasource": DS,
     "gridPos": place(12, 9),
     "description": "x0x_status_mesh_link_up{from,to} as an all-pairs matrix: 1 (UP) when the row's node reports a live mesh link to the column's node.",
     "targets": [target('x0x_status_mesh_link_up{from=~"$status_node"}', "", "A", True, "table")],
     "transformations": [{"id": "groupingToMatrix", "options": {"columnField": "to", "rowField": "from", "valueField": "Value", "emptyValue": "null"}}],
     "fieldConfig": {"defaults": {"mappings": UPDOWN, "custom": {"cellOptions": {"type": "color-background"}, "align": "center"},
                                  "thresholds": RG, "color": {"mode": "thresholds"}}, "overrides": []},
     "options": {"showHeader": True}}
panels.append(p)
newline()
ts("Mesh link RTT (from -> to)", [('x0x_status_mesh_link_rtt_seconds{from=~"$status_node"}', "{{from}} -> {{to}}")], unit="s",
   desc="x0x_status_mesh_link_rtt_seconds: each node's view of the RTT to each mesh peer.")
ts("Node RTT from the monitoring host", [('x0x_status_node_rtt_seconds{node=~"$status_node"}', "{{node}}")], unit="s")
ts("Mesh links up over time", [('x0x_status_mesh_link_up{from=~"$status_node"}', "{{from}} -> {{to}}")], w=12,
   desc="1 = link up. A dip names the pair that lost its link.")
ts("Peers seen vs expected (probe)", [('x0x_status_node_peers{node=~"$status_node"}', "{{node}} peers"),
                                      ('x0x_status_node_expected_peers{node=~"$status_node"}', "{{node}} expected")])
newline()
row("Nodes (GET /metrics)")
stat("Scrape up", 'up' + N, "{{instance}}", w=8, mappings=UPDOWN, thresholds=RG)
stat("Agents connected", 'sum(x0x_agents_connected' + N + ')', "agents", w=4)
stat("Directory size (max)", 'max(x0x_directory_agents' + N + ')', "agents", w=4)
stat("Relay circuits", 'sum(x0x_relay_circuits' + N + ')', "circuits", w=4)
stat("Relay throughput", 'sum(rate(x0x_relay_bytes_total' + N + '[5m]))', "B/s", unit="Bps", w=4)
newline()
ts("Mesh peers connected vs expected", [('x0x_peers_connected' + N, "{{instance}} connected"),
                                         ('x0x_peers_expected' + N, "{{instance}} expected")],
   desc="x0x_peers_expected is exported by newer nodes; without it only the connected count shows.")
ts("Agents connected", [('x0x_agents_connected' + N, "{{instance}}")])
ts("Directory size", [('x0x_directory_agents' + N, "{{instance}}")], desc="Agents in each node's directory, local and from the mesh.")
ts("Mesh peer RTT", [('x0x_mesh_peer_rtt_seconds' + N, "{{instance}} -> {{peer}}")], unit="s")
ts("Agent RTT quantiles", [('x0x_agent_rtt_seconds' + N, "{{instance}} q{{quantile}}")], unit="s")
ts("Coordinator requests", [('sum by (instance) (rate(x0x_coordinator_registrations_total' + N + '[5m]))', "{{instance}} registrations"),
                            ('sum by (instance, result) (rate(x0x_coordinator_lookups_total' + N + '[5m]))', "{{instance}} lookups {{result}}"),
                            ('sum by (instance, result) (rate(x0x_coordinator_introductions_total' + N + '[5m]))', "{{instance}} introductions {{result}}"),
                            ('sum by (instance) (rate(x0x_reflector_observations_total' + N + '[5m]))', "{{instance}} reflector observations")],
   unit="reqps")
newline()
row("Relay")
ts("Relay bytes/s", [('rate(x0x_relay_bytes_total' + N + '[5m])', "{{instance}}")], unit="Bps")
ts("Relay datagrams/s", [('rate(x0x_relay_datagrams_total' + N + '[5m])', "{{instance}}")], unit="pps")
ts("Relay drops by reason", [('sum by (instance, reason) (rate(x0x_relay_dropped_total' + N + '[5m]))', "{{instance}} {{reason}}")],
   unit="pps", stack=True, desc="x0x_relay_dropped_total by reason (X0xRelayDropping / X0xRelayGlobalLimit).")
ts("Relay circuits open", [('x0x_relay_circuits' + N, "{{instance}}")])
newline()
row("Connections and handshakes")
ts("Connections/s", [('rate(x0x_connections_accepted_total' + N + '[5m])', "{{instance}} accepted"),
                     ('rate(x0x_connections_dialed_total' + N + '[5m])', "{{instance}} dialed"),
                     ('rate(x0x_connections_closed_total' + N + '[5m])', "{{instance}} closed")], unit="cps")
ts("Handshake and dial failures/s", [('rate(x0x_handshake_failures_total' + N + '[5m])', "{{instance}} inbound handshake failures"),
                                     ('rate(x0x_dial_failures_total' + N + '[5m])', "{{instance}} mesh dial failures")], unit="cps")
ts("Connections rejected by reason", [('sum by (instance, reason) (rate(x0x_connections_rejected_total' + N + '[5m]))', "{{instance}} {{reason}}")],
   unit="cps", stack=True, desc="accept_rate, max_connections, duplicate, ... (X0xConnectionsRejected).")
ts("TLS handshakes by key-exchange group", [('sum by (instance, group) (rate(x0x_tls_handshakes_total' + N + '[5m]))', "{{instance}} {{group}}")],
   unit="cps", stack=True, desc="Anything but X25519MLKEM768 is a classical (non post-quantum) handshake (X0xTlsWithoutPostQuantum).")
ts("Frames rejected by reason", [('sum by (instance, reason) (rate(x0x_frames_rejected_total' + N + '[5m]))', "{{instance}} {{reason}}")],
   unit="cps", stack=True)

dash = {
    "uid": "x0x-fleet",
    "title": "x0x fleet",
    "description": "x0x bootstrap nodes (GET /metrics, job x0x) and the all-pairs status probe (x0x status --prometheus, job x0x-status). See docs/MONITORING.md.",
    "tags": ["x0x", "quic", "p2p"],
    "editable": True,
    "graphTooltip": 1,
    "schemaVersion": 39,
    "version": 1,
    "refresh": "30s",
    "time": {"from": "now-6h", "to": "now"},
    "timepicker": {},
    "timezone": "utc",
    "annotations": {"list": [{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
                              "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard"}]},
    "links": [],
    "templating": {"list": [
        {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
         "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": []},
        {"name": "instance", "label": "node", "type": "query", "datasource": DS,
         "query": {"query": 'label_values(up{job="x0x"}, instance)', "refId": "instance"},
         "definition": 'label_values(up{job="x0x"}, instance)',
         "multi": True, "includeAll": True, "allValue": ".*", "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
         "refresh": 2, "sort": 1, "hide": 0, "options": [], "regex": ""},
        {"name": "status_node", "label": "probed node", "type": "query", "datasource": DS,
         "query": {"query": "label_values(x0x_status_node_up, node)", "refId": "status_node"},
         "definition": "label_values(x0x_status_node_up, node)",
         "multi": True, "includeAll": True, "allValue": ".*", "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
         "refresh": 2, "sort": 1, "hide": 0, "options": [], "regex": ""},
    ]},
    "panels": panels,
}
print(json.dumps(dash, indent=2))
