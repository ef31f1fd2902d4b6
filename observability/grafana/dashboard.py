"""The meshsplit Grafana dashboard, as code (Grafana Foundation SDK for Python, pinned in
requirements-dev.txt). `make dashboards` writes meshsplit-dashboard.json beside this file;
tests/test_dashboard.py fails when the committed JSON differs from what this prints, and
tests/test_prometheus.py runs every query below against a real Prometheus scraping a real Envoy.

    python observability/grafana/dashboard.py            # print the dashboard JSON
    python observability/grafana/dashboard.py --write    # write meshsplit-dashboard.json

The queries read the series of docs/observing-a-split.md through the recording rules of
observability/prometheus/meshsplit-rules.yaml, so Prometheus must load those rules."""
import json
import pathlib
import sys

from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dash_b
from grafana_foundation_sdk.builders import prometheus as prom_b
from grafana_foundation_sdk.builders import stat as stat_b
from grafana_foundation_sdk.builders import statetimeline as state_b
from grafana_foundation_sdk.builders import timeseries as ts_b
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dash

HERE = pathlib.Path(__file__).resolve().parent
OUTPUT = HERE / "meshsplit-dashboard.json"
UID = "meshsplit-split"

# Every query goes to the Prometheus the `datasource` variable names.
DATASOURCE = dash.DataSourceRef(type_val="prometheus", uid="${datasource}")
# The label selectors a panel's query starts from. `$service` is one service inside the repeated
# row; the plugin variable is a regex (several plugins, or all).
SERVICE = 'plugin=~"$plugin", service=~"$service"'
PLUGIN = 'plugin=~"$plugin"'
# The same on the raw series, whose plugin label may still carry Istio 1.30's translated name
# (the recording rules read it as the 1.29 name, which the plugin variable lists).
RAW_PLUGIN = 'plugin=~"($plugin)(_istio-translated-wasmplugin)?"'
RAW_SERVICE = f'{RAW_PLUGIN}, service=~"$service"'
# The fleet's shares of the row's service, over every plugin selected (the recording rules keep
# plugins apart; a service under two plugin names, as during an Istio upgrade, is one split here).
# A service without traffic has no shares (no data, rather than 0/0).
SERVICE_REQUESTS = f"(sum (meshsplit:requests:rate1m{{{SERVICE}}}) > 0)"
OBSERVED_SHARE = (f"sum by (upstream) (meshsplit:requests:rate1m{{{SERVICE}}}) / ignoring (upstream) "
                  f"group_left () {SERVICE_REQUESTS}")
WEIGHT_SHARE = (f"sum by (upstream) (meshsplit:weighted_requests:rate1m{{{SERVICE}}}) / ignoring (upstream) "
                f"group_left () (sum (meshsplit:weighted_requests:rate1m{{{SERVICE}}}) > 0)")
# Each Envoy's weight share (what its weights in force give each upstream, 0..1), which needs no
# traffic: the lowest over the Envoys serving the service (0 for an upstream some of them lack, as
# in a rolling update that adds one) and the highest.
POD_SHARE = f"meshsplit:pod_weight_share:ratio{{{SERVICE}}}"
POD_SHARE_MIN = (f"(min by (upstream) ({POD_SHARE}) unless on (upstream) "
                 f"(count by (upstream) ({POD_SHARE}) < on () group_left () "
                 f"count (sum without (upstream) ({POD_SHARE})))) "
                 f"or 0 * count by (upstream) ({POD_SHARE})")
POD_SHARE_MAX = f"max by (upstream) ({POD_SHARE})"


def merged_plugin(expr):
    """A raw per-Envoy gauge under the plugin's one name, as the rules read it: Istio 1.30's
    translated name (`NAME_istio-translated-wasmplugin`) as NAME, and an Envoy that exports both
    (an upgrade in place) once, with the larger value."""
    return ('max without (meshsplit_plugin) (label_replace(max without (plugin) (label_replace('
            f'{expr}, "meshsplit_plugin", "$1", "plugin", "(.+?)(_istio-translated-wasmplugin)?")), '
            '"plugin", "$1", "meshsplit_plugin", "(.*)"))')


def query(expr, legend, ref="A"):
    return (prom_b.Dataquery().expr(expr).legend_format(legend).ref_id(ref).range()
            .datasource(DATASOURCE))


def override(**properties):
    return [dash.DynamicConfigValue(id_val=key.replace("__", "."), value=value)
            for key, value in properties.items()]


def legend_table(*calcs):
    return (common_b.VizLegendOptions().display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.RIGHT).show_legend(True).calcs(list(calcs)))


def split_panel():
    """The split over time: observed share stacked to 100 %, the weight in force's share as
    dashed lines over it. Answers: what split is traffic getting, and is it the one in force?"""
    return (ts_b.Panel().title("Split: observed share (stacked) and weight in force (dashed)")
            .description(
                "Stacked areas: each upstream's share of the service's requests over the last "
                "minute, over every Envoy (meshsplit:requests:rate1m). Dashed lines: the share the "
                "weights in force stand for (meshsplit:weighted_requests:rate1m): on each Envoy the "
                "configured weight, the rollout step's, or 0 while its guard has the upstream "
                "ejected, weighted by that Envoy's requests. Areas that follow the lines: the split "
                "is the one in force. Requests routed by a rule count in the observed share too.")
            .with_target(query(OBSERVED_SHARE, "{{upstream}}"))
            .with_target(query(WEIGHT_SHARE, "{{upstream}} weight", "B"))
            .unit("percentunit").min(0).max(1).fill_opacity(40).line_width(1)
            .stacking(common_b.StackingConfig().mode(common.StackingMode.NORMAL))
            .legend(legend_table("lastNotNull"))
            .override_by_query("B", override(
                custom__stacking={"mode": "none"}, custom__fillOpacity=0, custom__lineWidth=2,
                custom__lineStyle={"fill": "dash", "dash": [10, 10]}))
            .height(9).span(16))


def weight_panel():
    """The weights in force as the fleet's share, stepped: rollout steps and ejections show as
    steps. Beside it, the lowest and highest share an Envoy gives: the skew of a rolling update or
    of ejections some Envoys made."""
    thin = override(custom__lineWidth=1, custom__lineStyle={"fill": "dot", "dash": [0, 10]})
    return (ts_b.Panel().title("Weight in force (fleet share)")
            .description(
                "The share of the service's requests each upstream's weight in force stands for "
                "over the fleet (meshsplit:weighted_requests:rate1m over its sum for the service, "
                "as meshsplit:weight_share:ratio): on each Envoy the configured weight, the rollout "
                "step's, or 0 while its guard has the upstream ejected, as a share of that Envoy's "
                "weights, weighted by that Envoy's requests. What the observed share should be; it "
                "needs traffic. A rollout shows as steps; an ejection as a drop and back on "
                "readmission, as deep as the part of the traffic the ejecting Envoys route. "
                "Dotted: the lowest and highest share one Envoy gives the upstream "
                "(meshsplit:pod_weight_share:ratio, with or without traffic; the lowest is 0 when "
                "an Envoy serving the service lacks the upstream). Apart while Envoys differ: a "
                "rolling update, or an ejection some of them made.")
            .with_target(query(WEIGHT_SHARE, "{{upstream}} fleet share"))
            .with_target(query(POD_SHARE_MIN, "{{upstream}} lowest on an Envoy", "B"))
            .with_target(query(POD_SHARE_MAX, "{{upstream}} highest on an Envoy", "C"))
            .unit("percentunit").min(0).max(1)
            .line_interpolation(common.LineInterpolation.STEP_AFTER).line_width(2)
            .override_by_query("B", thin).override_by_query("C", thin)
            .legend(legend_table("lastNotNull"))
            .height(9).span(8))


def requests_panel():
    return (ts_b.Panel().title("Requests per second by upstream")
            .description(
                "Requests meshsplit routed to each upstream, by a rule or by the strategy, summed "
                "over the Envoys (meshsplit:requests:rate1m).")
            .with_target(query(f"sum by (upstream) (meshsplit:requests:rate1m{{{SERVICE}}})", "{{upstream}}"))
            .unit("reqps").min(0).legend(legend_table("mean", "lastNotNull"))
            .height(8).span(8))


def deviation_panel():
    return (ts_b.Panel().title("Observed share minus weight share")
            .description(
                "How far each upstream's observed share is from the share the weights in force "
                "stand for, over the fleet (as meshsplit:share_deviation:ratio_rate1m). Near 0 when "
                "the split follows the weights. MeshsplitShareOffWeight fires when an upstream "
                "stays more than 0.1 off for 5 minutes, on a service with at least 5 requests/s "
                "whose rules claim at most 5 % of its requests.")
            .with_target(query(f"({OBSERVED_SHARE}) - ({WEIGHT_SHARE})", "{{upstream}}"))
            .unit("percentunit").axis_soft_min(-0.1).axis_soft_max(0.1)
            .legend(legend_table("lastNotNull"))
            .height(8).span(8))


def ejected_panel():
    """Ejections as a state timeline: which upstream the guard had out, and when."""
    mappings = [dash.ValueMap(options={
        "0": dash.ValueMappingResult(text="serving", color="green"),
        "1": dash.ValueMappingResult(text="ejected", color="red")})]
    return (state_b.Panel().title("Guard: ejected upstreams and paused rollout")
            .description(
                "Per upstream, whether the guard has it ejected in any Envoy (max of "
                "meshsplit_ejected), and whether the service's rollout is paused by the guard "
                "(meshsplit_rollout_paused). An ejection by one Envoy shows here; the Weight in "
                "force panel shows how much of the traffic it takes. Services without a guard "
                "show nothing here. MeshsplitUpstreamEjected fires once an upstream has stayed "
                "ejected (or been ejected again at each readmission) for 5 minutes. "
                "MeshsplitRolloutPaused fires once a rollout has stayed paused for 2 minutes.")
            .with_target(query(f"max by (upstream) (meshsplit_ejected{{{RAW_SERVICE}}})", "{{upstream}}"))
            .with_target(query(f"max by (service) (meshsplit_rollout_paused{{{RAW_SERVICE}}})",
                               "rollout paused", "B"))
            .mappings(mappings).show_value(common.VisibilityMode.NEVER)
            .height(8).span(8))


def ejections_panel():
    return (stat_b.Panel().title("Ejections in range")
            .description(
                "How many times the guard ejected each upstream in the dashboard's time range, "
                "summed over the Envoys (meshsplit_ejections_total). The wasm build creates the "
                "counter at an Envoy's first ejection, at 1, which increase() cannot see: a "
                "counter that appeared in the range counts with its whole value.")
            .with_target(query(
                f"sum by (upstream) ((increase(meshsplit_ejections_total{{{RAW_SERVICE}}}[$__range]) "
                f"and meshsplit_ejections_total{{{RAW_SERVICE}}} offset $__range) or "
                f"(meshsplit_ejections_total{{{RAW_SERVICE}}} unless "
                f"meshsplit_ejections_total{{{RAW_SERVICE}}} offset $__range))",
                "{{upstream}}"))
            .decimals(0).no_value("0")
            .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]))
            .height(8).span(4))


def rule_hits_panel():
    return (ts_b.Panel().title("Rule hits per second")
            .description(
                "Requests each match rule of the service routed, by the rule's index in "
                "`rules` (meshsplit_rules_hits_total), and the share of the service's requests "
                "rules claimed over the last minute, over every plugin selected (as "
                "meshsplit:rule_share:ratio_rate1m; right axis).")
            .with_target(query(
                f"sum by (rule) (rate(meshsplit_rules_hits_total{{{RAW_SERVICE}}}[$__rate_interval]))",
                "rule {{rule}}"))
            .with_target(query(
                f"clamp_max(sum (rate(meshsplit_rules_hits_total{{{RAW_SERVICE}}}[1m])) / "
                f"{SERVICE_REQUESTS}, 1)", "share of requests", "B"))
            .unit("reqps").min(0).no_value("no rule hits")
            .override_by_query("B", override(unit="percentunit", custom__axisPlacement="right"))
            .height(8).span(8))


def errors_panel():
    return (ts_b.Panel().title("5xx ratio per upstream cluster")
            .description(
                "The part of each Envoy cluster's responses that were 5xx "
                "(meshsplit:cluster_errors:ratio_rate1m). meshsplit counts requests, not "
                "outcomes: an upstream's errors are those of the Envoy cluster its `cluster` "
                "names. Choose the clusters with the `cluster` variable.")
            .with_target(query(
                'meshsplit:cluster_errors:ratio_rate1m{envoy_cluster_name=~"$cluster"}',
                "{{envoy_cluster_name}}"))
            .unit("percentunit").min(0).legend(legend_table("max", "lastNotNull"))
            .height(8).span(12))


def alerts_panel():
    return (state_b.Panel().title("meshsplit alerts")
            .description(
                "The meshsplit alerts (observability/prometheus/meshsplit-rules.yaml) pending or "
                "firing, from Prometheus's ALERTS series.")
            .with_target(query(
                'max by (alertname, service, upstream, alertstate) (ALERTS{alertname=~"Meshsplit.*"})',
                "{{alertname}} {{service}} {{upstream}} ({{alertstate}})"))
            .show_value(common.VisibilityMode.NEVER)
            .height(8).span(12))


def refused_panel():
    return (stat_b.Panel().title("Envoys refusing their latest configuration")
            .description(
                "How many Envoys' wasm filter refused the latest configuration of the plugin and "
                "keep serving the previous one (meshsplit_config_refused), per plugin; 0 once they "
                "accept one. The plugin's Istio 1.30 name (NAME_istio-translated-wasmplugin) counts "
                "as its 1.29 one, and an Envoy exporting both once, as MeshsplitConfigRefused "
                "reads them. Envoy's log has the reason with the JSON path. MeshsplitConfigRefused "
                "fires meanwhile. The native build refuses a configuration through Envoy's own "
                "config rejection (listener or ECDS update stats), so this reads 0 there.")
            .with_target(query(
                f"sum by (plugin) ({merged_plugin(f'meshsplit_config_refused{{{RAW_PLUGIN}}}')})",
                "{{plugin}}"))
            .decimals(0).no_value("0")
            .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]))
            .height(6).span(8))


def unknown_panel():
    return (ts_b.Panel().title("Unknown-service requests per second")
            .description(
                "Requests whose service key matched no service (meshsplit:unknown_service:rate5m): "
                "routed as without the filter (`on_unknown_service: pass`) or answered 404 "
                "(`reject`). A rise after a deploy usually means a host name missing from a "
                "service's `hosts`. MeshsplitUnknownServiceRequests fires when a plugin's rate "
                "stays above 1 request/s for 5 minutes.")
            .with_target(query(f"meshsplit:unknown_service:rate5m{{{PLUGIN}}}", "{{plugin}}"))
            .unit("reqps").min(0)
            .height(6).span(8))


def no_cluster_panel():
    return (ts_b.Panel().title("No-cluster requests per second")
            .description(
                "Requests Envoy could not route because the cluster meshsplit chose is not "
                "configured in Envoy (meshsplit:no_cluster:rate5m, from Envoy's "
                "http.<prefix>.no_cluster): a `cluster` name in the plugin configuration that "
                "Envoy lacks. These requests get 503.")
            .with_target(query("meshsplit:no_cluster:rate5m", "{{envoy_http_conn_manager_prefix}}"))
            .unit("reqps").min(0)
            .height(6).span(8))


def variables():
    datasource = (dash_b.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
    plugin = (dash_b.QueryVariable("plugin").label("Plugin").datasource(DATASOURCE)
              .query("label_values(meshsplit:requests:rate1m, plugin)")
              .refresh(dash.VariableRefresh.ON_TIME_RANGE_CHANGED)
              .sort(dash.VariableSort.ALPHABETICAL_ASC).multi(True).include_all(True)
              .all_value(".*"))
    service = (dash_b.QueryVariable("service").label("Service").datasource(DATASOURCE)
               .query('label_values(meshsplit:requests:rate1m{plugin=~"$plugin"}, service)')
               .refresh(dash.VariableRefresh.ON_TIME_RANGE_CHANGED)
               .sort(dash.VariableSort.ALPHABETICAL_ASC).multi(True).include_all(True)
               .all_value(".*"))
    cluster = (dash_b.QueryVariable("cluster").label("Cluster (errors)").datasource(DATASOURCE)
               .query("label_values(meshsplit:cluster_responses:rate1m, envoy_cluster_name)")
               .refresh(dash.VariableRefresh.ON_TIME_RANGE_CHANGED)
               .sort(dash.VariableSort.ALPHABETICAL_ASC).multi(True).include_all(True)
               .all_value(".*"))
    return [datasource, plugin, service, cluster]


def annotations():
    """Ejections (a region while ejected) and weight changes (rollout steps, live updates,
    ejections, readmissions) as marks on every time series panel, once per service and upstream
    however many Envoys see them."""
    # A region for as long as the series is there: while the upstream is ejected in any Envoy.
    ejection = (dash_b.AnnotationQuery().name("Ejected").datasource(DATASOURCE).enable(True)
                .icon_color("red")
                .expr(f'max by (service, upstream) (meshsplit_ejected{{{RAW_SERVICE}}}) == 1'))
    weight = (dash_b.AnnotationQuery().name("Weight changes").datasource(DATASOURCE).enable(True)
              .icon_color("blue")
              .expr(f'max by (service, upstream) (changes({POD_SHARE}[1m])) > 0'))
    return [ejection, weight]


# Titles of the annotations, which the SDK's AnnotationQuery has no field for: Grafana's
# Prometheus annotation reads them from the query object itself.
ANNOTATION_TITLES = {"Ejected": "{{service}}/{{upstream}} ejected",
                     "Weight changes": "{{service}}/{{upstream}} weight changed"}


# The dashboard's layout: rows and the panels under each, top to bottom, left to right. The split
# row repeats for every service the `service` variable selects.
LAYOUT = [
    ("Split of $service", "service", [split_panel, weight_panel, requests_panel, deviation_panel,
                                      rule_hits_panel, ejected_panel, ejections_panel]),
    ("Errors and alerts", None, [errors_panel, alerts_panel]),
    ("Configuration and routing", None, [refused_panel, unknown_panel, no_cluster_panel]),
]


def build():
    board = (dash_b.Dashboard("meshsplit: traffic split").uid(UID)
             .description(
                 "What split is in force, what split traffic gets, and what is wrong, per "
                 "service. Needs Prometheus to scrape Envoy's /stats/prometheus and load "
                 "observability/prometheus/meshsplit-rules.yaml.")
             .tags(["meshsplit", "envoy", "istio"]).editable().refresh("30s").time("now-1h", "now")
             .tooltip(dash.DashboardCursorSync.CROSSHAIR)
             .variables(variables()).annotations(annotations()))
    # Grafana keys panels by id; the SDK leaves numbering them to the caller.
    ids = iter(range(1, 100))
    for title, repeat, panels in LAYOUT:
        row = dash_b.Row(title).id(next(ids))
        board = board.with_row(row.repeat(repeat) if repeat else row)
        for panel in panels:
            board = board.with_panel(panel().id(next(ids)).datasource(DATASOURCE))
    board = board.build()
    model = json.loads(json.dumps(board, cls=JSONEncoder))
    for annotation in model["annotations"]["list"]:
        title = ANNOTATION_TITLES.get(annotation.get("name"))
        if title:
            annotation.update(titleFormat=title, tagKeys="service,upstream", step="15s")
    return model


def render():
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def queries(model):
    """(where, expr) of every query the dashboard runs: each panel's targets (also inside rows),
    each annotation, and each query variable."""
    def panels(items):
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(model["panels"]):
        for target in panel.get("targets", []):
            yield f'panel "{panel["title"]}" {target["refId"]}', target["expr"]
    for annotation in model["annotations"]["list"]:
        if "expr" in annotation:
            yield f'annotation "{annotation["name"]}"', annotation["expr"]
    for variable in model["templating"]["list"]:
        if variable["type"] == "query":
            yield f'variable "{variable["name"]}"', variable["query"]


def main(argv):
    text = render()
    if argv[1:] == ["--write"]:
        OUTPUT.write_text(text)
        print(f"wrote {OUTPUT.relative_to(HERE.parent.parent)}")
    elif argv[1:]:
        sys.exit(f"usage: {argv[0]} [--write]")
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main(sys.argv)
